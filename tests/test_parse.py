"""``roost._parse``: the limits, what counts as nesting, and the error shape."""

from __future__ import annotations

import json

import pytest

from roost._parse import MAX_DEPTH, load_json, load_toml
from roost._yaml import load_yaml
from roost.errors import ChannelError, ConfigError, ReleaseError, StateFileError


@pytest.mark.parametrize(
    ("load", "deep", "line"),
    [
        (load_json, '{"a":\n' + "[" * 100_000, 2),
        (load_json, '{"a":' * (MAX_DEPTH + 1), 1),
        (load_toml, "x = 1\ny = " + "[" * 3000, 2),
        (load_toml, "x = " + "{a = " * 3000, 1),
        (load_yaml, "a:\n  b: " + "[" * 5000, 2),
        (load_yaml, "".join(" " * i + "k:\n" for i in range(MAX_DEPTH + 5)), MAX_DEPTH),
    ],
    ids=["json-array", "json-object", "toml-array", "toml-inline", "yaml-flow", "yaml-block"],
)
def test_too_deep_is_refused_with_its_line(load: object, deep: str, line: int) -> None:
    with pytest.raises(ConfigError, match=rf"^doc:{line}: nested deeper than {MAX_DEPTH} levels$"):
        load(deep, "doc", ConfigError)  # type: ignore[operator]


def test_exactly_the_limit_is_accepted() -> None:
    text = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_json(text, "doc", ReleaseError) == json.loads(text)
    assert load_yaml(text, "doc") == json.loads(text)
    assert load_toml("x = " + text, "doc") == {"x": json.loads(text)}
    with pytest.raises(ReleaseError, match="nested deeper"):
        load_json("[" + text + "]", "doc", ReleaseError)


def test_brackets_in_strings_and_comments_are_not_nesting() -> None:
    deep = "[" * 500 + "{" * 500
    assert load_json(json.dumps({"s": deep, "e": 'a\\"' + deep}), "d", ReleaseError)["s"] == deep
    toml = f"a = '{deep}'\nb = \"{deep}\"\n# {deep}\nc = '''\n{deep}\n'''\nd = \"\"\"{deep}\"\"\"\n"
    assert load_toml(toml, "d")["c"] == deep + "\n"
    yaml_text = f"a: '{deep}'\nb: \"{deep}\"\n# {deep}\nc: x  # {deep}\n"
    assert load_yaml(yaml_text, "d") == {"a": deep, "b": deep, "c": "x"}


def test_size_limit_and_error_classes() -> None:
    with pytest.raises(ChannelError, match=r"^channel.json: larger than 10 bytes$"):
        load_json(b"[1, 2, 3, 4, 5]", "channel.json", ChannelError, max_bytes=10)
    with pytest.raises(StateFileError, match=r"^tracker state file s: line 2: not valid JSON"):
        load_json(b"{\n,}", "s", StateFileError)
    with pytest.raises(ConfigError, match=r"^r.toml:3: not valid TOML: "):
        load_toml("a = 1\nb = 2\nc = \n", "r.toml")
    with pytest.raises(ConfigError, match=r"^i.yml:2: not valid YAML: "):
        load_yaml("a: [\n", "i.yml")
    with pytest.raises(ConfigError, match=r"^i.yml: not valid YAML: .*special characters"):
        load_yaml("a: \x00", "i.yml")
    with pytest.raises(ReleaseError, match=r"^m: not valid text"):
        load_json(b'{"a": "\xff"}', "m", ReleaseError)


def test_yaml_aliases_are_shared_until_they_repeat_too_much() -> None:
    assert load_yaml("a: &x {b: 1}\nc: *x\nd: {<<: *x, e: 2}\n", "d") == {
        "a": {"b": 1},
        "c": {"b": 1},
        "d": {"b": 1, "e": 2},
    }
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 7)]
    with pytest.raises(ConfigError, match=r"^d:6: aliases repeat more than 1000000 nodes$"):
        load_yaml("\n".join(lines), "d")
