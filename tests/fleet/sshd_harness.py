"""Real OpenSSH servers for fleet tests: one sshd per emulated host.

With root and network namespaces (the normal case) it builds a ``roost.lab``
fleet (hosts in namespaces behind a bridge, 198.19.x.0/24, each with its own
tmpfs ``/tmp`` and ``/opt``) and starts ``sshd -D`` on every host. Without
them it falls back to several sshd on 127.0.0.1 ports (``ROOST_TEST_SSHD=loopback``
forces it), each in its own mount namespace when ``unshare`` works.

The controller side gets a ``$HOME`` holding ``.ssh/config`` (user, identity
file, a known_hosts file with every host's key), so roost finds everything the
way a user's ssh would. Host ``refuse`` (optional) has an authorized_keys that
does not hold the test key; ``down_address`` is an address where nobody listens.
Cleanup kills every process inside the hosts' namespaces (only this harness's
namespaces), then removes the lab and the temp dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SSHD = "/usr/sbin/sshd"


@dataclass
class SshHost:
    name: str
    address: str
    port: int
    proc: subprocess.Popen[Any] | None = None
    netns: str | None = None
    holder_pid: int | None = None

    def path(self, path: str) -> Path:
        """Where the controller sees this host's private ``path``."""
        if self.holder_pid is None:
            return Path(path)
        return Path(f"/proc/{self.holder_pid}/root") / Path(path).relative_to("/")


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return Path(f"{path}.pub").read_text().strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def netns_usable() -> bool:
    if os.environ.get("ROOST_TEST_SSHD") == "loopback" or os.geteuid() != 0:
        return False
    probe = f"roostprobe{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok


#: For a test that runs against one ``sshd_fleet``: in network namespaces where
#: they can be made, on loopback ports otherwise. (The deploy test runs in both,
#: so that fleets whose hosts share one address stay covered where netns work.)
ONE_MODE = pytest.mark.parametrize(
    "sshd_fleet", ["netns" if netns_usable() else "loopback"], indirect=True
)


class SshdFleet:
    """``n`` hosts with sshd (+ one refusing the test key if ``refuse``)."""

    def __init__(self, n: int, *, refuse: bool = False, mode: str | None = None):
        self.n = n
        self.refuse = refuse
        self.mode = mode or ("netns" if netns_usable() else "loopback")
        self.dir = Path(tempfile.mkdtemp(prefix="roost-sshd-", dir="/var/tmp"))
        self.home = self.dir / "home"
        self.key = self.dir / "id_test"
        self.hosts: list[SshHost] = []
        self.refusing: SshHost | None = None
        self.lab: Any = None
        self.down_address = "127.0.0.1"
        self.down_port = 9

    # ---------------------------------------------------------------- build

    def up(self) -> SshdFleet:
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _up(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        client_pub = _keygen(self.key)
        other_pub = _keygen(self.dir / "id_other")
        total = self.n + (1 if self.refuse else 0)
        if self.mode == "netns":
            from roost.lab.netns import Lab

            third = 100 + os.getpid() % 150
            self.lab = Lab(total, prefix=f"fl{os.getpid()}", subnet=f"198.19.{third}.0/24").up()
            addresses = [(h.address, 22, h) for h in self.lab.hosts]
            self.down_address = f"198.19.{third}.250"
            self.down_port = 22
        else:
            addresses = [("127.0.0.1", _free_port(), None) for _ in range(total)]
            self.down_port = _free_port()
        known = []
        for i, (addr, port, labhost) in enumerate(addresses, 1):
            refusing = self.refuse and i == total
            name = "refuse" if refusing else f"h{i}"
            hostkey = self.dir / f"hostkey_{i}"
            pub = _keygen(hostkey)
            auth = self.dir / f"authorized_keys_{i}"
            auth.write_text((other_pub if refusing else client_pub) + "\n")
            auth.chmod(0o600)
            cfg = self.dir / f"sshd_config_{i}"
            cfg.write_text(
                f"ListenAddress {addr}:{port}\nHostKey {hostkey}\nAuthorizedKeysFile {auth}\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
                "Subsystem sftp internal-sftp\nMaxStartups 200\nMaxSessions 50\n"
                "LogLevel ERROR\n"
            )
            argv = [SSHD, "-D", "-e", "-f", str(cfg)]
            host = SshHost(name, addr, port)
            if labhost is not None:
                with open(self.dir / f"sshd_{i}.log", "wb") as log:
                    host.proc = labhost.popen(argv, stdin=subprocess.DEVNULL, stderr=log)
                host.netns, host.holder_pid = labhost.netns, labhost.holder_pid
            else:
                host.proc = self._loopback_sshd(argv, i)
                if self._private_mounts:
                    # unshare execs sh, which execs sshd: that pid holds the host's /opt, /tmp
                    host.holder_pid = host.proc.pid
            entry = f"[{addr}]:{port}" if port != 22 else addr
            known.append(f"{entry} {pub}")
            if refusing:
                self.refusing = host
            else:
                self.hosts.append(host)
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(parents=True)
        (ssh_dir / "known_hosts").write_text("\n".join(known) + "\n")
        (ssh_dir / "config").write_text(
            "Host *\n  User root\n"
            f"  IdentityFile {self.key}\n"
            f"  UserKnownHostsFile {ssh_dir / 'known_hosts'}\n"
        )
        for h in [*self.hosts, *([self.refusing] if self.refusing else [])]:
            self._wait_listening(h)

    @property
    def _private_mounts(self) -> bool:
        return os.geteuid() == 0 and shutil.which("unshare") is not None

    def _loopback_sshd(self, argv: list[str], i: int) -> subprocess.Popen[Any]:
        script = (
            "mount --make-rprivate / && mount -t tmpfs -o mode=1777 t /tmp && "
            "mkdir -p /opt && mount -t tmpfs t /opt && exec " + " ".join(argv)
        )
        cmd = ["unshare", "--mount", "--", "sh", "-c", script] if self._private_mounts else argv
        with open(self.dir / f"sshd_{i}.log", "wb") as log:
            return subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stderr=log, start_new_session=True
            )

    def _wait_listening(self, h: SshHost, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if h.proc is not None and h.proc.poll() is not None:
                raise RuntimeError(f"sshd for {h.name} exited: see {self.dir}")
            with contextlib.suppress(OSError), socket.create_connection((h.address, h.port), 0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd for {h.name} not listening on {h.address}:{h.port}")

    # ---------------------------------------------------------------- use

    def env(self) -> dict[str, str]:
        """Environment for a controller-side ``roost`` subprocess."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOST_", "SSH_"))}
        env["HOME"] = str(self.home)
        env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
        return env

    def inventory_line(self, h: SshHost) -> str:
        port = f" ansible_port={h.port}" if h.port != 22 else ""
        return f"{h.name} ansible_host={h.address}{port}"

    # ---------------------------------------------------------------- teardown

    def down(self) -> None:
        hosts = [*self.hosts, *([self.refusing] if self.refusing else [])]
        if self.lab is not None:
            # every process in our hosts' namespaces was started through this harness
            for h in hosts:
                if h.netns:
                    out = subprocess.run(
                        ["ip", "netns", "pids", h.netns], capture_output=True, text=True
                    ).stdout
                    for pid in out.split():
                        if h.holder_pid and int(pid) == h.holder_pid:
                            continue
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
            self.lab.down()
            self.lab = None
        for h in hosts:
            if self.lab is None and h.proc is not None and h.proc.poll() is None:
                _kill_mount_namespace(h.proc.pid)
            if h.proc is not None and h.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(h.proc.pid, signal.SIGKILL)
                h.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def _kill_mount_namespace(pid: int) -> None:
    """Kill every process sharing ``pid``'s private mount namespace (loopback mode)."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/mnt")
        if ns == os.readlink("/proc/self/ns/mnt"):
            return
    except OSError:
        return
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pid:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{entry}/ns/mnt") == ns:
                os.kill(int(entry), signal.SIGKILL)
