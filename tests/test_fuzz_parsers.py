"""Seeded, bounded fuzzing of the document parsers (issue 12).

The contract under test: the manifest parser, the channel reader and the
inventory parsers (INI, YAML, roost.toml) either return or raise a
``RoostError`` whose text is one line. Anything else (``RecursionError``,
``KeyError``, ``TypeError``...) is a bug, and fails here with the input that
caused it. Inputs are valid documents, then mutated: bytes flipped, cut,
repeated, brackets and quotes spliced in, values swapped for other JSON/YAML
types. A few thousand cases, a few seconds, the same every run.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from roost.channel import parse_channel
from roost.errors import RoostError
from roost.fleet.config import parse_config
from roost.fleet.inventory import parse_inventory
from roost.manifest import parse_manifest

SEED = 20261202
H = "0123456789abcdef" * 4

MANIFEST = {
    "version": 1,
    "tag": "v1",
    "root_mode": 0o755,
    "entries": [
        {"path": "bin", "type": "dir", "mode": 0o755},
        {"path": "bin/run", "type": "file", "mode": 0o755, "size": 3, "sha256": H},
        {"path": "bin/link", "type": "symlink", "mode": 0o777, "target": "run"},
    ],
}
CHANNEL = {
    "version": 1,
    "channel": "web",
    "releases": [
        {"tag": "v1", "info_hash": H[:40], "torrent": "v1.torrent", "published": 1.5},
        {"tag": "v2", "info_hash": H[1:41], "torrent": "v2.torrent", "feed": "http://o:1/"},
    ],
    "current": "v2",
}
INI = """\
# comment
[tracker]
t1 ansible_host=10.0.0.1 ansible_port=2222
[web]
web[01:03] datacenter=dc1 rack="r 1"
deploy@db1:2200
[peers:children]
web
[all:vars]
tag = v1   ; comment
destination_path=/opt/app
"""
YAML = """\
all:
  vars: {tag: v1}
  children:
    tracker:
      hosts: {t1: {ansible_host: 10.0.0.1}}
    peers:
      hosts:
        web[1:3]:
        db1: {ansible_port: 2200, ansible_user: deploy}
      vars: &v {datacenter: dc1}
    other:
      vars: *v
"""
TOML = """\
default_tag = "v42"
remote_path = "/opt/roost"
tracker_port = 8998
forks = 100
[ssh]
jump = "bastion"
connect_timeout = 10
"""
SPLICES = ["[", "]", "{", "}", '"', "'", ":", ",", "\\", "\n", "\x00", "#", "=", "*a", "&a", "-"]
VALUES: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x", "../etc", [], {}, [[[]]], {"a": {}}]


def mutate(rng: random.Random, text: str) -> str:
    """One to four random edits of ``text``."""
    for _ in range(rng.randint(1, 4)):
        pos = rng.randint(0, len(text))
        op = rng.randrange(6)
        if op == 0 and text:  # delete a span
            text = text[:pos] + text[pos + rng.randint(1, 8) :]
        elif op == 1:  # splice in syntax
            text = text[:pos] + rng.choice(SPLICES) * rng.randint(1, 3) + text[pos:]
        elif op == 2:  # a deep run of openers
            text = text[:pos] + rng.choice("[{") * rng.choice((50, 101, 2000)) + text[pos:]
        elif op == 3 and text:  # repeat a span
            end = min(len(text), pos + rng.randint(1, 40))
            text = text[:pos] + text[pos:end] * rng.randint(2, 5) + text[pos:]
        elif op == 4:  # a random character
            text = text[:pos] + chr(rng.randrange(0, 0x3000)) + text[pos:]
        else:  # cut
            text = text[:pos]
    return text


def replace_value(rng: random.Random, doc: Any) -> Any:
    """``doc`` with one value somewhere swapped for a value of another type."""
    doc = json.loads(json.dumps(doc))
    node = doc
    for _ in range(4):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = rng.choice(keys)
        if isinstance(node[key], dict | list) and rng.random() < 0.6:
            node = node[key]
            continue
        node[key] = rng.choice(VALUES)
        break
    return doc


def check(parse: Callable[[str], object], text: str) -> None:
    try:
        parse(text)
    except RoostError as exc:
        assert "\n" not in str(exc) and str(exc), f"not one line for {text[:200]!r}: {exc!r}"
    except Exception as exc:  # the bug this test exists to find
        pytest.fail(f"{type(exc).__name__}: {exc} for input {text[:300]!r}")


def json_cases(rng: random.Random, doc: Any, n: int) -> list[str]:
    base = json.dumps(doc, indent=1)
    out = [mutate(rng, base) for _ in range(n // 2)]
    out += [json.dumps(replace_value(rng, doc)) for _ in range(n // 2)]
    return out


def test_fuzz_manifest_parser() -> None:
    rng = random.Random(SEED)
    for text in json_cases(rng, MANIFEST, 1500):
        check(lambda t: parse_manifest(t.encode("utf-8", "surrogatepass")), text)


def test_fuzz_channel_reader() -> None:
    rng = random.Random(SEED + 1)
    for text in json_cases(rng, CHANNEL, 1500):
        check(lambda t: parse_channel(t.encode("utf-8", "surrogatepass")), text)


@pytest.mark.parametrize(
    ("base", "parse"),
    [
        (INI, lambda t: parse_inventory(t, "hosts.ini", yaml_format=False)),
        (YAML, lambda t: parse_inventory(t, "hosts.yml", yaml_format=True)),
        (TOML, lambda t: parse_config(t, "roost.toml")),
    ],
    ids=["ini", "yaml", "toml"],
)
def test_fuzz_inventory_parsers(base: str, parse: Callable[[str], object]) -> None:
    rng = random.Random(SEED + len(base))
    parse(base)  # the seed document itself is valid
    for _ in range(1000):
        check(parse, mutate(rng, base))
