"""Inventory and roost.toml parsing: tables of inputs, including ansible-lssd's
``production`` verbatim, and the file:line of every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost.errors import ConfigError
from roost.fleet.config import FleetConfig, jump_problem, parse_config
from roost.fleet.inventory import hosts_from_strings, load_inventory, parse_inventory

# ansible-lssd's README, verbatim
LSSD_PRODUCTION = """\
# ansible host
[ansible_host]
localhost ansible_connection=local

# tracker node
[tracker]
10.0.0.1 node_type=tracker

# seeder node
[seeder]
10.0.0.1 node_type=seeder

# peer nodes
[peer]
10.1.1.1
10.1.1.2
10.1.1.3
"""

LSSD_GROUP_VARS = """\
# deploy tag
tag: Deploy1

# path
seeder_files_path:  ~/builds
destination_path:   /opt/hoge  # or some other directory
"""


def test_lssd_production_with_group_vars(tmp_path: Path) -> None:
    (tmp_path / "production").write_text(LSSD_PRODUCTION)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all").write_text(LSSD_GROUP_VARS)
    inv = load_inventory(tmp_path / "production")
    assert inv.tracker.address == "10.0.0.1"
    assert inv.seeder.address == "10.0.0.1"
    assert [h.address for h in inv.peers] == ["10.1.1.1", "10.1.1.2", "10.1.1.3"]
    # the controller (ansible_connection=local) is not deployed to
    assert "localhost" not in [h.name for h in inv.remote_hosts]
    assert [h.name for h in inv.remote_hosts] == ["10.0.0.1", "10.1.1.1", "10.1.1.2", "10.1.1.3"]
    assert inv.get("tag") == "Deploy1"
    assert inv.get("seeder_files_path") == "~/builds"
    assert inv.get("destination_path") == "/opt/hoge"


@pytest.mark.parametrize(
    ("text", "peers", "tracker", "seeder"),
    [
        # Murder's default: only peers -> the first is tracker and seeder
        ("a\nb\nc\n", ["a", "b", "c"], "a", "a"),
        ("[peer]\nx\ny\n", ["x", "y"], "x", "x"),
        ("[peers]\nx\n[tracker]\nt\n", ["x"], "t", "x"),
        ("[tracker]\nt\n[seeder]\ns\n[peer]\np1\np2\n", ["p1", "p2"], "t", "s"),
        # children groups
        ("[dc1]\na\n[dc2]\nb\n[peer:children]\ndc1\ndc2\n", ["a", "b"], "a", "a"),
        # ranges
        (
            "[peer]\nweb[01:03].example\n",
            ["web01.example", "web02.example", "web03.example"],
            "web01.example",
            "web01.example",
        ),
        ("; comment\n# other\n\n[peer]\nh[a:c]\n", ["ha", "hb", "hc"], "ha", "ha"),
    ],
)
def test_ini_roles(text: str, peers: list[str], tracker: str, seeder: str) -> None:
    inv = parse_inventory(text, "inv")
    assert [h.name for h in inv.peers] == peers
    assert inv.tracker.name == tracker
    assert inv.seeder.name == seeder


def test_ini_host_vars_group_vars_and_connection() -> None:
    inv = parse_inventory(
        "[peer]\n"
        "web1 ansible_host=198.18.0.2 ansible_port=2222 ansible_user=deploy rack=r1\n"
        "root@web2:2200 datacenter=dc9\n"
        "web3 ansible_ssh_host=198.18.0.4 ansible_ssh_user=old\n"
        "[peer:vars]\n"
        "datacenter = dc1\n"
        "[all:vars]\ntag=v7\n",
        "inv",
    )
    w1, w2, w3 = inv.peers
    assert (w1.address, w1.port, w1.user) == ("198.18.0.2", 2222, "deploy")
    assert w1.labels == {"datacenter": "dc1", "rack": "r1"}
    assert (w2.address, w2.port, w2.user) == ("web2", 2200, "root")
    assert w2.labels == {"datacenter": "dc9"}  # host vars beat group vars
    assert (w3.address, w3.user) == ("198.18.0.4", "old")
    assert inv.get("tag") == "v7"


YAML_INV = """\
all:
  vars:
    tag: v3
    destination_path: /srv/app
  children:
    tracker:
      hosts:
        t1: {ansible_host: 198.18.0.10}
    peer:
      vars: {rack: r2}
      hosts:
        p[1:2]:
          ansible_host: 198.18.0.20
        p3:
"""


def test_yaml_inventory() -> None:
    inv = parse_inventory(YAML_INV, "inv.yml")
    assert inv.tracker.address == "198.18.0.10"
    assert inv.seeder.name == "p1"  # no seeder group: the first peer
    assert [h.name for h in inv.peers] == ["p1", "p2", "p3"]
    assert inv.peers[2].address == "p3"
    assert inv.peers[0].labels == {"rack": "r2"}
    assert inv.get("destination_path") == "/srv/app"


def test_plain_list_from_strings() -> None:
    inv = hosts_from_strings(["root@198.18.0.2:2222", "198.18.0.3", "[::1]:22"])
    assert [(h.user, h.address, h.port) for h in inv.peers] == [
        ("root", "198.18.0.2", 2222),
        (None, "198.18.0.3", None),
        (None, "::1", 22),
    ]
    assert inv.tracker.address == "198.18.0.2"


@pytest.mark.parametrize(
    ("name", "text", "where", "what"),
    [
        ("inv", "[peer\nh1\n", "inv:1:", "malformed section header"),
        ("inv", "[peer]\nh1\nh2 foo\n", "inv:3:", "expected key=value"),
        ("inv", "[peer]\nh1 ansible_port=abc\n", "inv:2:", "not a number"),
        ("inv", "[peer]\nh1 ansible_port=70000\n", "inv:2:", "out of range"),
        ("inv", "[g:bogus]\nh\n", "inv:1:", "unknown section kind"),
        ("inv", "[g:vars]\njust-a-word\n", "inv:2:", "expected key=value"),
        ("inv", "[g:children]\ntwo words\n", "inv:2:", "one group name"),
        ("inv", "[p:children]\nnope\n", "inv:", "unknown child group"),
        ("inv", "[peer]\nweb[3:1]\n", "inv:2:", "empty host range"),
        ("inv", "[peer]\nh 'unclosed\n", "inv:2:", "cannot split"),
        ("inv", "# nothing\n", "inv:", "no hosts"),
        ("i.yml", "all:\n  hostz: {}\n", "i.yml:2:", "unknown key 'hostz'"),
        ("i.yml", "all:\n  hosts: [a, b]\n", "i.yml:2:", "must be a mapping"),
        ("i.yml", "all:\n  hosts:\n    a: 3\n", "i.yml:3:", "vars must be a mapping"),
        ("i.yml", "all: {\n", "i.yml:2:", "not valid YAML"),
    ],
)
def test_bad_inventories_name_file_and_line(name: str, text: str, where: str, what: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_inventory(text, name)
    message = str(err.value)
    assert message.startswith(where), message
    assert what in message
    assert "\n" not in message


def test_an_inventory_directory_is_the_inventory_file_in_it(tmp_path: Path) -> None:
    # Ansible's layout, inventories/production/{hosts,group_vars/}: -i DIR
    (tmp_path / "hosts").write_text(LSSD_PRODUCTION)
    (tmp_path / "hosts~").write_text("an editor's backup\n")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all").write_text(LSSD_GROUP_VARS)
    inv = load_inventory(tmp_path)
    assert [h.address for h in inv.peers] == ["10.1.1.1", "10.1.1.2", "10.1.1.3"]
    assert inv.get("tag") == "Deploy1"
    (tmp_path / "staging").write_text("10.9.9.9\n")
    with pytest.raises(ConfigError, match="exactly one inventory file, it holds hosts, staging"):
        load_inventory(tmp_path)


def test_bad_group_vars_file_named(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("a\n")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text("tag: [unclosed\n")
    with pytest.raises(ConfigError, match=r"group_vars/all.yml:\d+: not valid YAML"):
        load_inventory(tmp_path / "hosts")
    with pytest.raises(ConfigError, match=r"cannot read inventory: No such file or directory$"):
        load_inventory(tmp_path / "missing")


def test_config_defaults_and_values() -> None:
    assert parse_config("") == FleetConfig()
    cfg = parse_config(
        'default_tag = "v1"\nremote_path = "/srv/roost"\nforks = 1000\nbootstrap_relay = 0\n'
        '[ssh]\njump = "bastion"\nconnect_timeout = 3\n'
    )
    assert (cfg.default_tag, cfg.remote_path, cfg.forks) == ("v1", "/srv/roost", 1000)
    assert (cfg.bootstrap_direct, cfg.bootstrap_relay) == (8, 0)
    assert cfg.venv == "/srv/roost/venv"
    assert (cfg.ssh.jump, cfg.ssh.connect_timeout) == ("bastion", 3.0)


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("forks = 5\nforkz = 1\n", "roost.toml:2:", "unknown setting 'forkz'"),
        ("[ssh]\nport = 2\n", "roost.toml:2:", "unknown setting 'ssh.port'"),
        ('forks = "many"\n', "roost.toml:1:", "forks must be int"),
        ("forks = 0\n", "roost.toml:1:", "at least 1"),
        ('temp_path = "tmp"\n', "roost.toml:1:", "absolute path"),
        ("tracker_port = 99999\n", "roost.toml:1:", "out of range"),
        ("forks = \n", "roost.toml:1:", "not valid TOML"),
        (
            "forks = 9\nbootstrap_direct = 0\n",
            "roost.toml:2:",
            "bootstrap_direct must be at least 1",
        ),
        ("bootstrap_relay = -1\n", "roost.toml:1:", "bootstrap_relay must be at least 0"),
        ("[ssh]\nconnect_timeout = -1\n", "roost.toml:2:", "ssh.connect_timeout must be"),
        ("[ssh]\nstep_timeout = 0\n", "roost.toml:2:", "ssh.step_timeout must be a number"),
        ("[ssh]\nstep_timeout = nan\n", "roost.toml:2:", "ssh.step_timeout must be a number"),
        ('[ssh]\nuser = "u"\njump = "bad:host:x"\n', "roost.toml:3:", "is not [user@]host"),
        ('[ssh]\njump = "b1,b2:0"\n', "roost.toml:2:", "ssh.jump: 'b2:0' has a bad port '0'"),
    ],
)
def test_bad_config(text: str, where: str, what: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert str(err.value).startswith(where), str(err.value)
    assert what in str(err.value)


@pytest.mark.parametrize(
    "jump", ["bastion", "root@10.0.0.1:2222", "a@b,c:22", "deploy@gw.example.com"]
)
def test_jump_hosts_of_the_form_asyncssh_reads(jump: str) -> None:
    assert jump_problem(jump) is None
    assert parse_config(f'[ssh]\njump = "{jump}"\n').ssh.jump == jump


def test_roost_toml_trust_is_a_list_of_key_paths() -> None:
    cfg = parse_config('trust = ["/etc/roost/release.pub", "/etc/roost/next.pub"]\n')
    assert cfg.trust == ("/etc/roost/release.pub", "/etc/roost/next.pub")
    with pytest.raises(ConfigError, match=r"roost.toml:2: trust must be a list of strings"):
        parse_config('forks = 3\ntrust = "/etc/roost/release.pub"\n')
