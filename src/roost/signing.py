"""Signed releases: OpenSSH signatures (``ssh-keygen -Y``) over what names a release.

Theory of operation. What identifies a roost release is its info-hash, its tag
and the sha256 of its manifest (the last two sit in the info dict's
``x-roost``, so the info-hash already covers them; naming all three keeps the
signed statement readable on its own). :func:`statement` renders them as a
few lines of text, and the release owner signs that text with an SSH key in
OpenSSH's SSHSIG format, namespace ``roost-release``. The armored signature
travels in the .torrent's top-level ``x-roost-sig`` key: outside the info dict,
so signing does not change the info-hash, and wherever the torrent goes (a
deploy, a channel, an agent) its signature goes too.

Why this format and tool: operators already hold SSH keys, often in an agent
or on a hardware token, and ``ssh-keygen -Y sign`` works with all of those.
``ssh-keygen -Y verify`` is the format's reference implementation, present
wherever OpenSSH (8.2 or later) is, so a peer needs no new library and no
roost-written cryptography. Trusted keys are plain OpenSSH public keys
(``id_ed25519.pub``), one or more per file, checked when they are loaded.

:func:`check` refuses, with one line naming the release and the reason, a
release that is unsigned, signed by a key that is not trusted, or whose
signature does not match what the torrent now says. Nothing here downloads
or installs; callers check before either.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from roost.errors import SignatureError, UsageError

__all__ = [
    "NAMESPACE",
    "NO_KEYS",
    "TORRENT_KEY",
    "TrustedKeys",
    "check",
    "load_trusted",
    "sign",
    "statement",
]

NAMESPACE = "roost-release"
TORRENT_KEY = b"x-roost-sig"
_PRINCIPAL = "roost-release-signer"
_TIMEOUT = 30.0
_MAX_SIGNATURE = 64 * 1024


def statement(info_hash: str, tag: str, manifest_sha256: str) -> bytes:
    """The text a release signature covers."""
    return (
        f"roost release v1\ninfo-hash {info_hash}\ntag {tag}\nmanifest-sha256 {manifest_sha256}\n"
    ).encode()


def _ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    if path is None:
        raise UsageError(
            "signed releases need ssh-keygen (OpenSSH 8.2 or later): apt-get install openssh-client"
        )
    return path


def _run(args: list[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [_ssh_keygen(), *args],
            input=data,
            capture_output=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        step = " ".join(args[:2])
        raise SignatureError(f"ssh-keygen {step} took more than {_TIMEOUT:g}s") from None


def _last_line(output: bytes) -> str:
    lines = output.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def _looks_like_a_key(path: Path) -> bool:
    """A PEM or OpenSSH private key, or an OpenSSH public key line."""
    try:
        with path.open("rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return True  # ssh-keygen names what is wrong with it
    return (
        head.startswith(b"-----BEGIN ") or re.match(rb"(ssh|ecdsa|sk)-[\w@.-]+ ", head) is not None
    )


def sign(message: bytes, key: Path) -> bytes:
    """Sign ``message`` with the SSH key at ``key`` (a private key, or a public
    key whose private half is in ssh-agent); returns the armored signature."""
    key = Path(key)
    if not key.is_file():
        raise UsageError(f"signing key {key} does not exist")
    if not _looks_like_a_key(key):
        # ssh-keygen would say "Couldn't load public key KEY: No such file".
        raise UsageError(
            f"signing key {key} is not an SSH key (a private key, or a .pub whose "
            "private half is in ssh-agent)"
        )
    done = _run(["-Y", "sign", "-n", NAMESPACE, "-q", "-f", str(key)], message)
    if done.returncode != 0 or not done.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        raise UsageError(f"cannot sign with {key}: {_last_line(done.stderr)}")
    return done.stdout


@dataclass(frozen=True)
class TrustedKeys:
    """Public keys a peer accepts release signatures from, as
    ``(source, OpenSSH public key line)`` pairs."""

    keys: tuple[tuple[str, str], ...]

    def __bool__(self) -> bool:
        return bool(self.keys)

    def allowed_signers(self) -> str:
        return "".join(f'{_PRINCIPAL} namespaces="{NAMESPACE}" {line}\n' for _, line in self.keys)


NO_KEYS = TrustedKeys(())


def load_trusted(paths: Sequence[Path | str]) -> TrustedKeys:
    """Read OpenSSH public key files (``*.pub``, one key per line; ``#``
    comments and blank lines skipped). ``UsageError`` names the file and line
    of anything that is not a public key, before anything is downloaded."""
    from roost._asyncssh import asyncssh

    keys: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"cannot read trusted key file {path}: {reason}") from None
        found = 0
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                key = asyncssh.import_public_key(line)
            except (asyncssh.KeyImportError, ValueError):
                raise UsageError(f"{path}:{number}: not an OpenSSH public key") from None
            keys.append((f"{path}:{number}", key.export_public_key().decode().strip()))
            found += 1
        if not found:
            raise UsageError(f"trusted key file {path} holds no public key")
    if keys:
        _ssh_keygen()
    return TrustedKeys(tuple(keys))


def check(
    trusted: TrustedKeys,
    *,
    info_hash: str,
    tag: str | None,
    manifest_sha256: str | None,
    signature: bytes | None,
) -> str:
    """Refuse (``SignatureError``) unless ``signature`` is a good signature by a
    trusted key over this release; returns the signer's key fingerprint."""
    what = f"release {tag or '?'} ({info_hash})"
    if tag is None or manifest_sha256 is None:
        raise SignatureError(f"{what} is not a roost release, so it cannot be signed", info_hash)
    if not signature:
        raise SignatureError(f"{what} is unsigned and signed releases are required", info_hash)
    if len(signature) > _MAX_SIGNATURE:
        raise SignatureError(f"{what} has a signature larger than 64 KiB", info_hash)
    message = statement(info_hash, tag, manifest_sha256)
    with tempfile.TemporaryDirectory(prefix="roost-sig-") as tmp:
        sig_path = os.path.join(tmp, "release.sig")
        signers = os.path.join(tmp, "allowed_signers")
        Path(sig_path).write_bytes(signature)
        Path(signers).write_text(trusted.allowed_signers())
        good = _run(
            ["-Y", "verify", "-f", signers, "-I", _PRINCIPAL, "-n", NAMESPACE, "-s", sig_path],
            message,
        )
        if good.returncode == 0:
            return _fingerprint(good.stdout + good.stderr)
        # Tell "someone else signed this" from "this is not what was signed".
        valid = _run(["-Y", "check-novalidate", "-n", NAMESPACE, "-s", sig_path], message)
    if valid.returncode == 0:
        signer = _fingerprint(valid.stdout + valid.stderr)
        raise SignatureError(f"{what} is signed by {signer}, which is not trusted", info_hash)
    raise SignatureError(
        f"{what}: signature does not match its info-hash, tag and manifest "
        "(tampered, or signed for another release)",
        info_hash,
    )


def _fingerprint(output: bytes) -> str:
    for word in output.decode("utf-8", "replace").split():
        if word.startswith("SHA256:"):
            return f"key {word}"
    return "an unknown key"
