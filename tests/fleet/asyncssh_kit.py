"""SSH hosts without root: asyncssh servers on 127.0.0.1 port 0, each with
its own host key, that run each command in a local shell (``/bin/sh -c``,
with ``SSH_CONNECTION`` set as sshd sets it) and count their connections.

For the unit tests of roost.fleet.ssh (fan-out, time limits, failures, host
keys); the end-to-end fleet tests keep a real sshd (sshd_harness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost._asyncssh import asyncssh


@dataclass
class ShellHost:
    port: int
    host_key: asyncssh.SSHKey
    connections: int = 0

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class ShellFleet:
    hosts: list[ShellHost]
    identity: Path  # the client key every host accepts
    known_hosts: Path  # every host's key
    ssh_config: Path  # empty: nothing of ~/.ssh/config applies


async def _run_command(
    process: asyncssh.SSHServerProcess[bytes], live: set[asyncio.subprocess.Process]
) -> None:
    peer, here = process.get_extra_info("peername"), process.get_extra_info("sockname")
    env = dict(os.environ, SSH_CONNECTION=f"{peer[0]} {peer[1]} {here[0]} {here[1]}")
    shell = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        process.command or "",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    live.add(shell)

    async def pump(source: asyncio.StreamReader, sink: Any) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()

    assert shell.stdout is not None and shell.stderr is not None
    try:
        await asyncio.gather(pump(shell.stdout, process.stdout), pump(shell.stderr, process.stderr))
        status = await shell.wait()
    except (asyncio.CancelledError, BrokenPipeError, ConnectionError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)  # the client went away: so does the command
        await shell.wait()
        raise
    finally:
        live.discard(shell)
    process.exit(status)


def _server_class(host: ShellHost, accepted: asyncssh.SSHKey) -> type[asyncssh.SSHServer]:
    class Server(asyncssh.SSHServer):
        def connection_made(self, conn: Any) -> None:
            host.connections += 1

        def begin_auth(self, username: str) -> bool:
            return True

        def public_key_auth_supported(self) -> bool:
            return True

        def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
            return bool(key.public_data == accepted.public_data)

    return Server


@contextmanager
def shell_fleet(directory: Path, count: int) -> Iterator[ShellFleet]:
    """``count`` SSH hosts on 127.0.0.1, served by a loop on a thread of
    this process; stopped after."""
    client = asyncssh.generate_private_key("ssh-ed25519")
    identity = directory / "id_ed25519"
    identity.write_bytes(client.export_private_key())
    identity.chmod(0o600)
    ssh_config = directory / "ssh_config"
    ssh_config.write_text("")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(target=lambda: (ready.set(), loop.run_forever()), daemon=True)
    thread.start()
    ready.wait()
    servers: list[Any] = []
    live: set[asyncio.subprocess.Process] = set()  # commands still running

    async def start() -> list[ShellHost]:
        hosts = []
        for _ in range(count):
            key = asyncssh.generate_private_key("ssh-ed25519")
            host = ShellHost(port=0, host_key=key)
            server = await asyncssh.listen(
                "127.0.0.1",
                0,
                server_host_keys=[key],
                server_factory=_server_class(host, client),
                process_factory=lambda process: _run_command(process, live),
                encoding=None,
                line_editor=False,
            )
            host.port = server.sockets[0].getsockname()[1]
            servers.append(server)
            hosts.append(host)
        return hosts

    hosts = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(
        "".join(
            f"[127.0.0.1]:{h.port} {h.host_key.export_public_key().decode().strip()}\n"
            for h in hosts
        )
    )
    try:
        yield ShellFleet(hosts, identity, known_hosts, ssh_config)
    finally:

        async def stop() -> None:
            # a command whose client gave up (a time limit) may still run:
            # it goes first (closing waits for its session), and so do the
            # tasks that pumped its output
            for shell in list(live):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(shell.pid, signal.SIGKILL)  # the shell and what it started
            for server in servers:
                server.close()
                await server.wait_closed()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
