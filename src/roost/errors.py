"""roost's one exception tree.

    RoostError                     anything roost reports to a user as one line
    ├── UsageError                 bad arguments, bad tag, missing source
    ├── ConfigError                bad inventory / roost.toml (file, line)
    ├── ReleaseError               cannot pack or read a release
    │   ├── BencodeError           not valid bencoding (also a ValueError)
    │   ├── UnsafeArchiveError     a member would land outside the destination
    │   └── SignatureError         unsigned, untrusted or tampered (info-hash)
    ├── DestinationError           destination not empty, not writable, full
    │   └── DiskFull               no space left where a download or install writes
    ├── VerifyError                extracted tree differs from the manifest
    ├── EngineError                libtorrent refused or failed (info-hash)
    │   └── LibtorrentError        libtorrent raised (operation, reason, info-hash)
    ├── TrackerError               tracker could not start / answered a failure
    │   ├── ProtocolError          malformed request (the HTTP status to answer)
    │   │   └── Refused            well-formed, not served (token, allow-list)
    │   └── StateFileError         unreadable state file (path, reason)
    ├── HookError                  the post-download hook failed (exit status)
    ├── HealthError                a health check failed or timed out (reason)
    ├── PeerProtocolError          a malformed ``roost peer --events json`` line
    ├── AgentStateError            an agent's state file is unreadable or malformed
    ├── ChannelError               a release channel is unreachable, malformed
    │                              or names a release it does not hold
    ├── FetchError                 an HTTP GET failed, timed out or was too
    │                              large (url, status)
    ├── RemoteError                a step on a remote host failed (host, step,
    │   │                          exit status, stderr tail)
    │   └── FleetAborted           too many hosts failed (failed, total)
    ├── DeployStopped              a deploy cannot go on: its tracker or origin
    │                              is down (step, reason); every host still
    │                              running fails with it (roost.deploy)
    └── LabError                   emulated fleet could not be built

The CLI prints ``str(error)`` of a RoostError on one line and exits non-zero.
Anything else escaping is a bug and shows its traceback.
"""

from __future__ import annotations

import errno


class RoostError(Exception):
    """Base of every error roost reports to a user."""

    exit_code: int = 1

    def __str__(self) -> str:
        text = super().__str__()
        # One line, always: the CLI relies on it.
        return " ".join(text.split()) if "\n" in text else text


class UsageError(RoostError):
    exit_code = 2


class ConfigError(RoostError):
    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class ReleaseError(RoostError):
    pass


class BencodeError(ReleaseError, ValueError):
    """Input is not valid bencoding."""


class UnsafeArchiveError(ReleaseError):
    def __init__(self, member: str, reason: str):
        super().__init__(f"refusing archive: member {member!r} {reason}")
        self.member = member
        self.reason = reason


class SignatureError(ReleaseError):
    """A release whose signature is missing, untrusted or does not match."""

    def __init__(self, message: str, info_hash: str | None = None):
        super().__init__(message)
        self.info_hash = info_hash


class DestinationError(RoostError):
    pass


class DiskFull(DestinationError):
    """No space left on the device of ``where`` (download area or destination)."""

    def __init__(self, where: object):
        super().__init__(f"no space left on the device of {where}")
        self.where = where


def disk_error(exc: OSError, where: object, cannot: str) -> DestinationError:
    """The error for ``exc`` from writing in ``where``: ``DiskFull`` when the
    device is full, else ``DestinationError("{cannot}: {reason}")``."""
    if exc.errno == errno.ENOSPC:
        return DiskFull(where)
    return DestinationError(f"{cannot}: {exc.strerror or exc}")


class VerifyError(RoostError):
    pass


class EngineError(RoostError):
    def __init__(self, message: str, *, info_hash: str | None = None):
        super().__init__(f"{message} (info-hash {info_hash})" if info_hash else message)
        self.info_hash = info_hash


class LibtorrentError(EngineError):
    """libtorrent failed while roost's engine did ``operation`` ("cannot add
    torrent"); ``reason`` is libtorrent's own text (or the OS's, for a step
    the engine takes for libtorrent: making the save path). Raised by
    :mod:`roost.engine` only, which translates every libtorrent failure."""

    def __init__(self, operation: str, reason: str, *, info_hash: str | None = None):
        super().__init__(f"{operation}: {reason}", info_hash=info_hash)
        self.operation = operation
        self.reason = reason


class TrackerError(RoostError):
    pass


class ProtocolError(TrackerError):
    """Malformed request or announce; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Refused(ProtocolError):
    """A well-formed announce the tracker will not serve (token, allow-list)."""

    def __init__(self, message: str):
        super().__init__(message, status=200)


class StateFileError(TrackerError):
    def __init__(self, path: object, reason: str):
        super().__init__(f"tracker state file {path}: {reason}")
        self.path = path
        self.reason = reason


class HookError(RoostError):
    def __init__(
        self, command: str, exit_status: int, stderr_tail: str = "", *, timeout: float | None = None
    ):
        tail = f": {stderr_tail.strip().splitlines()[-1]}" if stderr_tail.strip() else ""
        if timeout is not None:
            super().__init__(f"hook {command!r} timed out after {timeout:g}s{tail}")
        else:
            super().__init__(f"hook {command!r} exited with status {exit_status}{tail}")
        self.command = command
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail


class HealthError(RoostError):
    def __init__(self, command: str, reason: str):
        super().__init__(f"health check {command!r} {reason}")
        self.command = command
        self.reason = reason


class PeerProtocolError(RoostError):
    pass


class AgentStateError(RoostError):
    """DEST/.roost-agent.json cannot be read, is too large or is malformed."""


class ChannelError(RoostError):
    pass


class FetchError(RoostError):
    """An HTTP GET failed (``status`` set when the server answered an error)."""

    def __init__(self, url: str, reason: str, status: int | None = None):
        super().__init__(f"cannot fetch {url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status


class RemoteError(RoostError):
    def __init__(
        self,
        host: str,
        step: str,
        message: str,
        *,
        exit_status: int | None = None,
        stderr_tail: str = "",
    ):
        super().__init__(f"{host}: {step}: {message}")
        self.host = host
        self.step = step
        #: what went wrong, without the host and step (the summary's reason)
        self.reason = message
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail


class FleetAborted(RemoteError):
    """Too many hosts failed: the remaining steps were not run."""

    def __init__(self, step: str, failed: int, total: int, limit: float):
        super().__init__(
            "fleet",
            step,
            f"aborted: {failed} of {total} hosts failed, more than --max-fail-percent {limit:g}",
        )
        self.failed = failed
        self.total = total


class DeployStopped(RoostError):
    """A deploy's tracker or origin could not start: no host can finish.

    Raised by a deploy runner (roost.deploy); the driver fails every host
    not yet finished with ``reason`` at ``step``. ``aborted``: the fleet's
    own abort (``--max-fail-percent``), reported as the summary's."""

    def __init__(self, step: str, reason: str, *, aborted: str | None = None):
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason
        self.aborted = aborted


class LabError(RoostError):
    pass
