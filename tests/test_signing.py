"""Signed releases: real keys made by ssh-keygen, real signatures, every refusal."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from roost import bencode, signing
from roost.cli import main
from roost.errors import SignatureError, UsageError
from roost.metainfo import check_signature, read_torrent_file, sign_torrent
from roost.release import create_release

pytestmark = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None,
    reason="ssh-keygen is absent: apt-get install openssh-client",
)


def _key(directory: Path, name: str) -> Path:
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    keydir = tmp_path / "keys"
    keydir.mkdir()
    return _key(keydir, "owner"), _key(keydir, "stranger")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    tree = tmp_path / "build"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "app").write_text("#!/bin/sh\necho v1\n")
    (tree / "README").write_text("hello\n")
    return tree


def _trust(*keys: Path) -> signing.TrustedKeys:
    return signing.load_trusted([Path(f"{k}.pub") for k in keys])


def test_signed_release_is_accepted_and_keeps_its_info_hash(
    tmp_path: Path, src: Path, keys: tuple[Path, Path]
) -> None:
    owner, _ = keys
    plain = create_release(src, "v1", tmp_path / "plain", announce=[])
    signed = create_release(src, "v1", tmp_path / "signed", announce=[], sign_key=owner)
    assert signed.info_hash == plain.info_hash
    meta = read_torrent_file(signed.torrent)
    assert meta.signature and meta.signature.startswith(b"-----BEGIN SSH SIGNATURE-----")
    signer = check_signature(meta, _trust(owner))
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{owner}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert signer == f"key {fingerprint}"
    # No trusted keys: nothing is checked, signed or not.
    assert check_signature(read_torrent_file(plain.torrent), _trust()) is None


def test_unsigned_release_is_refused(tmp_path: Path, src: Path, keys: tuple[Path, Path]) -> None:
    owner, _ = keys
    release = create_release(src, "v1", tmp_path / "out", announce=[])
    with pytest.raises(SignatureError, match=r"release v1 \(\w{40}\) is unsigned") as info:
        check_signature(read_torrent_file(release.torrent), _trust(owner))
    assert info.value.info_hash == release.info_hash


def test_wrong_key_is_refused_and_named(tmp_path: Path, src: Path, keys: tuple[Path, Path]) -> None:
    owner, stranger = keys
    release = create_release(src, "v1", tmp_path / "out", announce=[], sign_key=stranger)
    with pytest.raises(SignatureError, match=r"signed by key SHA256:\S+, which is not trusted"):
        check_signature(read_torrent_file(release.torrent), _trust(owner))
    # Trusting both keys accepts it.
    assert check_signature(read_torrent_file(release.torrent), _trust(owner, stranger))


def test_tampered_torrent_is_refused(tmp_path: Path, src: Path, keys: tuple[Path, Path]) -> None:
    """Changing what the info dict says (here the manifest's sha256, as a
    tampered manifest would need) changes the info-hash the signature named."""
    owner, _ = keys
    release = create_release(src, "v1", tmp_path / "out", announce=[], sign_key=owner, tar=True)
    top = bencode.decode(release.torrent.read_bytes())
    top[b"info"][b"x-roost"][b"manifest-sha256"] = b"0" * 64
    release.torrent.write_bytes(bencode.encode(top))
    with pytest.raises(SignatureError, match="signature does not match its info-hash"):
        check_signature(read_torrent_file(release.torrent), _trust(owner))


def test_signature_moved_to_another_release_is_refused(
    tmp_path: Path, src: Path, keys: tuple[Path, Path]
) -> None:
    owner, _ = keys
    v1 = create_release(src, "v1", tmp_path / "out", announce=[], sign_key=owner)
    (src / "README").write_text("changed\n")
    v2 = create_release(src, "v2", tmp_path / "out", announce=[])
    top = bencode.decode(v2.torrent.read_bytes())
    top[signing.TORRENT_KEY] = read_torrent_file(v1.torrent).signature
    v2.torrent.write_bytes(bencode.encode(top))
    with pytest.raises(SignatureError, match=r"release v2 .*does not match"):
        check_signature(read_torrent_file(v2.torrent), _trust(owner))


def test_sign_an_existing_release(tmp_path: Path, src: Path, keys: tuple[Path, Path]) -> None:
    owner, _ = keys
    release = create_release(src, "v1", tmp_path / "out", announce=["http://127.0.0.1:1/a"])
    before = read_torrent_file(release.torrent)
    meta = sign_torrent(release.torrent, owner)
    assert meta.info_hash == before.info_hash and meta.announce == before.announce
    assert check_signature(meta, _trust(owner))
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_a_signing_key_that_is_not_a_key_is_named(
    tmp_path: Path, src: Path, keys: tuple[Path, Path]
) -> None:
    release = create_release(src, "v1", tmp_path / "out", announce=["http://127.0.0.1:1/a"])
    notes = tmp_path / "notes.txt"
    notes.write_text("not a key\n")
    # ssh-keygen said "Couldn't load public key notes.txt: No such file or directory".
    with pytest.raises(UsageError, match=r"signing key .*notes\.txt is not an SSH key"):
        sign_torrent(release.torrent, notes)
    with pytest.raises(UsageError, match="does not exist"):
        sign_torrent(release.torrent, tmp_path / "missing")
    owner, _ = keys
    assert check_signature(sign_torrent(release.torrent, Path(f"{owner}.pub")), _trust(owner))


def test_bad_trusted_key_files_are_named(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("# a comment\n\nssh-ed25519 not-base64!\n")
    with pytest.raises(UsageError, match=r"bad\.pub:3: not an OpenSSH public key"):
        signing.load_trusted([bad])
    empty = tmp_path / "empty.pub"
    empty.write_text("# nothing\n")
    with pytest.raises(UsageError, match="holds no public key"):
        signing.load_trusted([empty])
    with pytest.raises(UsageError, match="cannot read trusted key file"):
        signing.load_trusted([tmp_path / "missing.pub"])
    # A file of several keys, with comments, is fine.
    both = tmp_path / "both.pub"
    both.write_text("".join(Path(f"{k}.pub").read_text() for k in keys))
    assert len(signing.load_trusted([both]).keys) == 2


def test_cli_create_sign_verify(
    tmp_path: Path, src: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    owner, stranger = keys
    out = tmp_path / "out"
    assert main(["create", str(src), "--tag", "v1", "--out", str(out), "--sign", str(owner)]) == 0
    assert "signed     with" in capsys.readouterr().out
    dest = tmp_path / "dest"
    assert main(["deploy", str(src), "--tag", "v1", "--local", "1", "--dest", str(dest)]) == 0
    capsys.readouterr()
    target = str(dest / "host-1" / "v1")
    torrent = str(out / "v1.torrent")
    assert main(["verify", target, "--torrent", torrent, "--trust", f"{owner}.pub"]) == 0
    assert "signed by key SHA256:" in capsys.readouterr().out
    assert main(["verify", target, "--torrent", torrent, "--trust", f"{stranger}.pub"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("roost: error: release v1") and "not trusted" in err
    assert len(err.splitlines()) == 1
    assert main(["sign", torrent, "--key", str(stranger)]) == 0
    assert main(["verify", target, "--torrent", torrent, "--trust", f"{stranger}.pub"]) == 0
    capsys.readouterr()
    assert main(["sign", torrent, "--key", str(tmp_path / "nokey")]) == 2
    assert "signing key" in capsys.readouterr().err


def test_local_deploy_signed_and_trusted(
    tmp_path: Path, src: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each host's peer checks the signature before it downloads: signed by
    the trusted key, every host installs; unsigned, every host refuses."""
    owner, stranger = keys
    dest = tmp_path / "fleet"
    base = ["deploy", str(src), "--local", "2", "--dest", str(dest), "--linger", "0", "--json"]
    trust = ["--trust", f"{owner}.pub"]
    assert main([*base, "--tag", "v1", "--sign", str(owner), *trust]) == 0
    assert json.loads(capsys.readouterr().out)["hosts_ok"] == 2
    assert main([*base, "--tag", "v2", *trust]) == 1
    doc = json.loads(capsys.readouterr().out)
    for host in doc["hosts"]:
        assert "is unsigned and signed releases are required" in host["error"]
        assert host["bytes_down"] == 0
        assert not (dest / host["name"] / "v2").exists()
    assert main([*base, "--tag", "v3", "--sign", str(stranger), *trust]) == 1
    assert "which is not trusted" in json.loads(capsys.readouterr().out)["hosts"][0]["error"]
    bad = tmp_path / "bad.pub"
    bad.write_text("nonsense\n")
    assert main([*base, "--tag", "v4", "--trust", str(bad)]) == 2
    assert "bad.pub:1: not an OpenSSH public key" in capsys.readouterr().err


def test_peer_with_trust_refuses_a_magnet(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    magnet = "magnet:?xt=urn:btih:" + "a" * 40 + "&tr=http://127.0.0.1:9/announce"
    argv = ["peer", magnet, "--dest", str(tmp_path / "d"), "--temp-path", str(tmp_path / "t")]
    assert main([*argv, "--trust", f"{keys[0]}.pub", "--foreground", "--timeout", "5"]) == 2
    assert "a magnet link carries no signature" in capsys.readouterr().err
