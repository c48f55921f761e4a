"""SSH fan-out: THE ONLY module importing asyncssh.

Theory of operation. A ``Fleet`` owns one SSH connection per host, opened on
first use and reused by every later step. ``Fleet.each(step, fn)`` runs
``fn(session)`` on every host that has not failed yet, at most ``forks`` at a
time (one asyncio semaphore, no thread per host, so 1000+ hosts are fine),
each bounded by the step's time limit. Every host yields one ``HostResult``;
a failing host never stops the others, it is recorded in ``Fleet.failures``
with its first failing step and left out of later steps. When more than
``max_fail_percent`` of the hosts have failed, the next step raises
``FleetAborted`` instead of running.

asyncssh's and the OS's errors are translated here into ``RemoteError`` (host,
step, exit status, stderr tail); nothing asyncssh-specific leaves this module.
``~/.ssh/config`` (through ``$HOME``), the SSH agent (``$SSH_AUTH_SOCK``),
known_hosts checking (strict unless explicitly turned off), ``ProxyJump`` and
an explicit jump host are honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import resource
import shlex
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from roost._asyncssh import asyncssh
from roost.errors import FleetAborted, RemoteError, UsageError
from roost.fleet.config import SSHSettings
from roost.fleet.hosts import Host

log = logging.getLogger(__name__)
T = TypeVar("T")
TAIL = 2000


def tail(text: str, limit: int = TAIL) -> str:
    return text[-limit:] if len(text) > limit else text


@dataclass(frozen=True)
class SSHOptions(SSHSettings):
    """How to reach hosts: roost.toml's ``[ssh]`` settings plus the fan-out
    bounds. ``None`` means: what ``~/.ssh/config`` or ssh says."""

    forks: int = 100
    max_fail_percent: float = 100.0


@dataclass(frozen=True)
class HostResult(Generic[T]):
    """What one step did on one host."""

    host: str
    step: str
    ok: bool
    value: T | None = None
    error: RemoteError | None = None
    seconds: float = 0.0

    @property
    def reason(self) -> str:
        return str(self.error) if self.error else ""


@dataclass(frozen=True)
class Completed:
    exit_status: int
    stdout: str
    stderr: str


@dataclass
class _Conn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    conn: Any = None


def _translate(host: Host, step: str, exc: BaseException, timeout: float | None) -> RemoteError:
    name = host.name
    if isinstance(exc, RemoteError):
        return exc
    if isinstance(exc, asyncssh.PermissionDenied):
        return RemoteError(name, step, f"ssh authentication refused for {host.target}")
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return RemoteError(
            name,
            step,
            f"host key of {host.target} not verifiable ({exc.reason}); add it to known_hosts "
            "or pass --insecure-no-host-key-check",
        )
    if isinstance(exc, asyncssh.ProcessError):
        return RemoteError(
            name,
            step,
            f"exited with status {exc.exit_status}",
            exit_status=exc.exit_status,
            stderr_tail=tail(str(exc.stderr or "")),
        )
    if isinstance(exc, asyncssh.SFTPError):
        return RemoteError(name, step, f"file transfer failed: {exc.reason}")
    if isinstance(exc, asyncssh.Error):
        return RemoteError(name, step, f"ssh: {exc.reason}")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        limit = f" after {timeout:g} s" if timeout else ""
        return RemoteError(name, step, f"timed out{limit}")
    if isinstance(exc, OSError):
        return RemoteError(name, step, f"cannot reach {host.target}: {exc.strerror or exc}")
    return RemoteError(name, step, f"{type(exc).__name__}: {exc}")


class Session:
    """One host's connection, as a step sees it."""

    def __init__(self, host: Host, step: str, conn: Any):
        self.host = host
        self.step = step
        self._conn = conn

    @property
    def local_address(self) -> str:
        """The controller's address on the path to this host (what the host sees)."""
        sock = self._conn.get_extra_info("sockname")
        return str(sock[0]) if sock else ""

    @property
    def peer_address(self) -> str:
        """The host's address as this connection reached it."""
        peer = self._conn.get_extra_info("peername")
        return str(peer[0]) if peer else self.host.address

    async def run(self, command: str, *, check: bool = True, input: str | None = None) -> Completed:
        """Run ``command`` through the remote shell. Raises ``RemoteError`` on a
        non-zero exit when ``check``."""
        result = await self._conn.run(command, check=False, input=input)
        out, err = str(result.stdout or ""), str(result.stderr or "")
        status = result.exit_status if result.exit_status is not None else -1
        if check and status != 0:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            signal = f" (signal {result.exit_signal[0]})" if result.exit_signal else ""
            raise RemoteError(
                self.host.name,
                self.step,
                f"exited with status {status}{signal}" + (f": {last}" if last else ""),
                exit_status=status,
                stderr_tail=tail(err),
            )
        return Completed(status, out, err)

    async def stream(
        self, command: str, on_line: Callable[[str], None], *, check: bool = True
    ) -> Completed:
        """Run ``command``, calling ``on_line`` with each stdout line as it comes."""
        async with self._conn.create_process(command, stdin=asyncssh.DEVNULL) as proc:
            err_chunks: list[str] = []

            async def read_err() -> None:
                async for chunk in proc.stderr:
                    err_chunks.append(chunk)
                    if sum(map(len, err_chunks)) > 4 * TAIL:
                        del err_chunks[: len(err_chunks) // 2]

            err_task = asyncio.ensure_future(read_err())
            out_lines: list[str] = []
            async for line in proc.stdout:
                out_lines.append(line)
                del out_lines[:-50]
                on_line(line.rstrip("\n"))
            await err_task
            result = await proc.wait(check=False)
        err = "".join(err_chunks)
        status = result.exit_status if result.exit_status is not None else -1
        if check and status != 0:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            raise RemoteError(
                self.host.name,
                self.step,
                f"exited with status {status}" + (f": {last}" if last else ""),
                exit_status=status,
                stderr_tail=tail(err),
            )
        return Completed(status, "".join(out_lines), err)

    async def put(self, local: Sequence[Path], remote_dir: str) -> None:
        """Copy local files into ``remote_dir`` (created if missing) over SFTP."""
        await self.run(f"mkdir -p {shlex.quote(remote_dir)}")
        async with self._conn.start_sftp_client() as sftp:
            await sftp.put([str(p) for p in local], remote_dir + "/", preserve=False)

    async def put_as(self, local: Path, remote: str) -> None:
        """Copy one local file to the path ``remote`` (its directory created
        if missing, a file there replaced) over SFTP."""
        await self.run(f"mkdir -p {shlex.quote(posixpath.dirname(remote) or '/')}")
        async with self._conn.start_sftp_client() as sftp:
            await sftp.put(str(local), remote, preserve=False)

    async def get(self, remote: str, local: Path) -> None:
        async with self._conn.start_sftp_client() as sftp:
            await sftp.get(remote, str(local))


FD_SPARE = 64  # files the controller needs besides one socket per host


def ensure_open_files(hosts: int) -> int:
    """Make room for one open socket per host: every connection stays open
    until the fleet closes, whatever ``forks`` is. Raises the soft
    RLIMIT_NOFILE (towards two per host, for ProxyCommand pipes and jump
    hosts) up to the hard limit; a hard limit below one per host is a
    ``UsageError``. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = hosts + FD_SPARE
    unlimited = hard == resource.RLIM_INFINITY
    if not unlimited and hard < need:
        raise UsageError(
            f"{hosts} hosts need at least {need} open files, but the hard limit "
            f"(ulimit -Hn) is {hard}: raise it or split the inventory"
        )
    want = 2 * hosts + FD_SPARE if unlimited else min(hard, 2 * hosts + FD_SPARE)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        log.debug("raised RLIMIT_NOFILE from %d to %d for %d hosts", soft, want, hosts)
        soft = want
    return soft


class Fleet:
    """Bounded SSH fan-out over ``hosts`` with per-host connection reuse."""

    def __init__(self, hosts: Iterable[Host], options: SSHOptions | None = None):
        self.hosts: list[Host] = list(hosts)
        self.options = options or SSHOptions()
        ensure_open_files(len(self.hosts))
        self.failures: dict[str, RemoteError] = {}
        self._sem = asyncio.Semaphore(max(1, self.options.forks))
        self._conns: dict[str, _Conn] = {h.name: _Conn() for h in self.hosts}

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def healthy(self) -> list[Host]:
        return [h for h in self.hosts if h.name not in self.failures]

    def _connect_kwargs(self, host: Host) -> dict[str, Any]:
        o = self.options
        kw: dict[str, Any] = {"connect_timeout": o.connect_timeout}
        config = o.config or str(Path(os.environ.get("HOME", "~")) / ".ssh" / "config")
        if Path(config).expanduser().is_file():
            kw["config"] = [str(Path(config).expanduser())]
        if host.port:
            kw["port"] = host.port
        user = host.user or o.user
        if user:
            kw["username"] = user
        if o.identity:
            kw["client_keys"] = [str(Path(o.identity).expanduser())]
        if o.insecure_no_host_key_check:
            kw["known_hosts"] = None
        elif o.known_hosts:
            kw["known_hosts"] = str(Path(o.known_hosts).expanduser())
        if o.jump:
            kw["tunnel"] = o.jump
        return kw

    async def _connection(self, host: Host, step: str) -> Any:
        slot = self._conns.setdefault(host.name, _Conn())
        async with slot.lock:
            if slot.conn is None:
                log.debug("[%s] connecting to %s", host.name, host.target)
                slot.conn = await asyncssh.connect(host.address, **self._connect_kwargs(host))
            return slot.conn

    def check_abort(self, step: str) -> None:
        total = len(self.hosts)
        failed = len(self.failures)
        if total and failed * 100.0 / total > self.options.max_fail_percent:
            raise FleetAborted(step, failed, total, self.options.max_fail_percent)

    async def each(
        self,
        step: str,
        fn: Callable[[Session], Awaitable[T]],
        *,
        hosts: Iterable[Host] | None = None,
        timeout: float | None = None,
    ) -> dict[str, HostResult[T]]:
        """Run ``fn`` on every healthy host of ``hosts`` (default: all).

        Returns one result per host. Raises ``FleetAborted`` before running if
        the failure threshold is already exceeded.
        """
        self.check_abort(step)
        limit = self.options.step_timeout if timeout is None else timeout
        targets = [h for h in (self.hosts if hosts is None else hosts)]
        for h in targets:
            self._conns.setdefault(h.name, _Conn())

        async def one(host: Host) -> HostResult[T]:
            if host.name in self.failures:
                return HostResult(host.name, step, False, error=self.failures[host.name])
            started = time.monotonic()
            async with self._sem:
                try:
                    conn = await self._connection(host, step)
                    value = await asyncio.wait_for(fn(Session(host, step, conn)), limit)
                except (Exception, asyncio.CancelledError) as exc:
                    if isinstance(exc, asyncio.CancelledError) and not isinstance(
                        exc, asyncio.TimeoutError
                    ):
                        raise
                    err = _translate(host, step, exc, limit)
                    log.info("[%s] %s failed: %s", host.name, step, err)
                    self.failures.setdefault(host.name, err)
                    await self._drop(host)
                    return HostResult(
                        host.name, step, False, error=err, seconds=time.monotonic() - started
                    )
            return HostResult(host.name, step, True, value, seconds=time.monotonic() - started)

        results = await asyncio.gather(*(one(h) for h in targets))
        return {r.host: r for r in results}

    async def run(
        self,
        step: str,
        command: str | Callable[[Host], str],
        *,
        hosts: Iterable[Host] | None = None,
        timeout: float | None = None,
    ) -> dict[str, HostResult[Completed]]:
        """Run a shell command (or one built per host) on every host."""

        async def fn(s: Session) -> Completed:
            cmd = command(s.host) if callable(command) else command
            return await s.run(cmd)

        return await self.each(step, fn, hosts=hosts, timeout=timeout)

    async def _drop(self, host: Host) -> None:
        slot = self._conns.get(host.name)
        if slot is not None and slot.conn is not None:
            conn, slot.conn = slot.conn, None
            conn.close()

    async def close(self) -> None:
        conns = [s.conn for s in self._conns.values() if s.conn is not None]
        for s in self._conns.values():
            s.conn = None
        for c in conns:
            c.close()
        for c in conns:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(c.wait_closed(), 5)
