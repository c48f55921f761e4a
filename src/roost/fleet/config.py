"""``roost.toml``: the fleet's defaults (Murder's config variables).

Example::

    default_tag = "v42"                    # Murder default_tag
    default_seeder_files_path = "~/builds" # Murder default_seeder_files_path
    default_destination_path = "/opt/app"  # Murder default_destination_path
    remote_path = "/opt/roost"             # Murder remote_murder_path (venv inside)
    temp_path = "/tmp/roost"               # Murder default_temp_path
    tracker_port = 8998
    feed_port = 8997                       # a seeder host's feed (roost seed --feed-port)
    forks = 100
    bootstrap_direct = 8   # hosts the controller sends wheels to at once
    bootstrap_relay = 4    # hosts each bootstrapped host passes them on to (0: off)
    trust = ["/etc/roost/release.pub"]  # the hosts' peers refuse releases it did not sign

    [ssh]
    config = "~/.ssh/config"
    identity = "~/.ssh/deploy_ed25519"
    known_hosts = "~/.ssh/known_hosts"
    insecure_no_host_key_check = false
    jump = "bastion.example.com"
    connect_timeout = 10
    step_timeout = 600

Unknown keys raise ``ConfigError`` with the file and line, and so do values
out of range: ``forks`` below 1, a time limit not above 0, a ``jump`` that is
not ``[user@]host[:port]`` (``jump_problem``, which ``--jump`` shares).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from roost._parse import load_toml
from roost.errors import ConfigError


@dataclass(frozen=True)
class SSHSettings:
    config: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    insecure_no_host_key_check: bool = False
    jump: str | None = None
    user: str | None = None
    connect_timeout: float = 10.0
    step_timeout: float = 600.0


@dataclass(frozen=True)
class FleetConfig:
    default_tag: str | None = None
    default_seeder_files_path: str | None = None
    default_destination_path: str | None = None
    remote_path: str = "/opt/roost"
    temp_path: str = "/tmp/roost"
    tracker_port: int = 8998
    #: where a seeder host serves the origin's feed (roost.feed)
    feed_port: int = 8997
    forks: int = 100
    max_fail_percent: float = 100.0
    wheel_cache: str | None = None
    bootstrap_direct: int = 8
    bootstrap_relay: int = 4
    #: public key files on the hosts whose release signatures their peers
    #: accept (``roost peer --trust``); empty: any release
    trust: tuple[str, ...] = ()
    ssh: SSHSettings = field(default_factory=SSHSettings)

    @property
    def venv(self) -> str:
        return f"{self.remote_path.rstrip('/')}/venv"

    @property
    def remote_roost(self) -> str:
        return f"{self.venv}/bin/roost"


def jump_problem(text: str) -> str | None:
    """What is wrong with ``text`` as jump hosts, None if nothing is.

    ``text`` is ``[user@]host[:port]``, or several of them joined by commas
    for a chain (ProxyJump's form, which asyncssh reads): a host without
    colons (no IPv6 literals: name such a host in ``~/.ssh/config``), a port
    of 1 to 65535.
    """
    for hop in text.split(","):
        user, at, host = hop.rpartition("@")
        host, colon, port = host.rpartition(":") if ":" in host else (host, "", "")
        if at and not user:
            return f"{hop!r} has an empty user"
        if not host or ":" in host or any(ch.isspace() for ch in hop):
            return f"{hop!r} is not [user@]host[:port]"
        if colon and not (port.isdigit() and 0 < int(port) < 65536):
            return f"{hop!r} has a bad port {port!r} (1-65535)"
    return None


def _line_of(text: str, key: str, table: str | None) -> int | None:
    in_table = table is None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = re.match(r"^\[([^\]]*)\]", line)  # not [\s*(.+?)\s*]: linear
        if m:
            header = m.group(1).strip()
            in_table = header == table if table else False
            if table is None and header == key:
                return n
            continue
        if in_table and re.match(rf"^\"?{re.escape(key)}\"?\s*=", line):
            return n
    return None


def _typed(
    cls: type, data: dict[str, Any], text: str, path: str, table: str | None
) -> dict[str, Any]:
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        where = _line_of(text, key, table)
        name = f"{table}.{key}" if table else key
        if key not in known or (key == "ssh" and table is None and not isinstance(value, dict)):
            raise ConfigError(f"unknown setting {name!r}", path=path, line=where)
        if key == "ssh":
            continue
        default = known[key].default
        expected: tuple[type, ...]
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of strings", path=path, line=where)
            out[key] = tuple(value)
            continue
        if isinstance(default, bool):
            expected = (bool,)
        elif isinstance(default, int):
            expected = (int,)
        elif isinstance(default, float):
            expected = (int, float)
        else:
            expected = (str,)
        if not isinstance(value, expected) or (expected != (bool,) and isinstance(value, bool)):
            raise ConfigError(
                f"{name} must be {expected[0].__name__}, got {value!r}", path=path, line=where
            )
        out[key] = float(value) if expected == (int, float) else value
    return out


def parse_config(text: str, path: str = "roost.toml") -> FleetConfig:
    """Parse ``roost.toml`` text. Raises ``ConfigError`` (file, line)."""
    data = load_toml(text, path)  # bounded in size and nesting, errors name the line
    top = _typed(FleetConfig, data, text, path, None)
    ssh = SSHSettings(**_typed(SSHSettings, data.get("ssh", {}), text, path, "ssh"))
    cfg = FleetConfig(**top, ssh=ssh)
    if cfg.forks < 1:
        raise ConfigError("forks must be at least 1", path=path, line=_line_of(text, "forks", None))
    for key in ("bootstrap_direct", "bootstrap_relay"):
        if getattr(cfg, key) < (1 if key == "bootstrap_direct" else 0):
            raise ConfigError(
                f"{key} must be at least {1 if key == 'bootstrap_direct' else 0}",
                path=path,
                line=_line_of(text, key, None),
            )
    for key in ("tracker_port", "feed_port"):
        if not 0 < getattr(cfg, key) < 65536:
            raise ConfigError(f"{key} out of range", path=path, line=_line_of(text, key, None))
    for key in ("connect_timeout", "step_timeout"):
        if not 0 < getattr(cfg.ssh, key) < math.inf:
            raise ConfigError(
                f"ssh.{key} must be a number of seconds above 0",
                path=path,
                line=_line_of(text, key, "ssh"),
            )
    problem = jump_problem(cfg.ssh.jump) if cfg.ssh.jump is not None else None
    if problem:
        raise ConfigError(f"ssh.jump: {problem}", path=path, line=_line_of(text, "jump", "ssh"))
    for key in ("remote_path", "temp_path"):
        if not str(getattr(cfg, key)).startswith("/"):
            raise ConfigError(
                f"{key} must be an absolute path", path=path, line=_line_of(text, key, None)
            )
    return cfg


def load_config(path: Path | str | None = None) -> FleetConfig:
    """Read ``path``, or ``./roost.toml`` if present, else the defaults."""
    if path is None:
        candidate = Path("roost.toml")
        if not candidate.is_file():
            return FleetConfig()
        path = candidate
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"cannot read: {why}", path=str(p)) from None
    return parse_config(text, str(p))


def with_overrides(cfg: FleetConfig, **changes: Any) -> FleetConfig:
    """``cfg`` with the non-None ``changes`` applied (``ssh_*`` keys go to ``ssh``)."""
    top = {k: v for k, v in changes.items() if v is not None and not k.startswith("ssh_")}
    ssh = {k[4:]: v for k, v in changes.items() if v is not None and k.startswith("ssh_")}
    return replace(cfg, **top, ssh=replace(cfg.ssh, **ssh))
