"""The SSH side of rollouts: :class:`SSHRunner` acts on an inventory's hosts
for ``roost.rollout.run_rollout``. Activation runs ``roost activate … --json``
on the host (the one implementation, ``roost.activation``); the health command
runs through the host's shell in the release's directory, bounded by
coreutils' ``timeout`` there and by the step's time limit here."""

from __future__ import annotations

import shlex
from typing import Any

from roost._parse import load_json
from roost.activation import RELEASES, Switch
from roost.errors import PeerProtocolError, RemoteError
from roost.fleet.config import FleetConfig
from roost.fleet.ssh import Fleet, Session
from roost.fleet.tasks import Remote
from roost.rollout import DEFAULT_HEALTH_TIMEOUT, HealthResult

__all__ = ["SSHRunner"]


class SSHRunner:
    def __init__(
        self,
        fleet: Fleet,
        cfg: FleetConfig,
        dest: str,
        *,
        timeout: float = DEFAULT_HEALTH_TIMEOUT,
        keep: int | None = None,
    ):
        self.fleet = fleet
        self.remote = Remote(cfg)
        self.dest = dest.rstrip("/") or "/"
        self.timeout = timeout
        self.keep = keep
        self.hosts = {h.name: h for h in fleet.hosts}

    async def _on(self, host: str, step: str, fn: Any, timeout: float | None = None) -> Any:
        results = await self.fleet.each(step, fn, hosts=[self.hosts[host]], timeout=timeout)
        result = results[host]
        if not result.ok:
            assert result.error is not None
            # A failed step must not bar the host from the next (a rollback).
            self.fleet.failures.pop(host, None)
            raise result.error
        return result.value

    async def _switch(self, host: str, step: str, argv: list[str]) -> Switch:
        command = self.remote.roost(*argv, "--dest", self.dest, "--json")

        async def fn(s: Session) -> Switch:
            out = await s.run(command, check=False)
            last = (out.stdout.strip().splitlines() or [""])[-1]
            try:
                doc = load_json(last, "roost activate's answer", PeerProtocolError)
            except PeerProtocolError:
                doc = None
            if out.exit_status != 0:
                if isinstance(doc, dict) and doc.get("error"):
                    raise RemoteError(s.host.name, step, str(doc["error"]))
                # no answer on stdout: its last line on stderr is the context
                err = out.stderr.strip().splitlines()
                tail = f": {err[-1]}" if err else ""
                raise RemoteError(s.host.name, step, f"exit status {out.exit_status}{tail}")
            if not (isinstance(doc, dict) and "tag" in doc and "changed" in doc):
                raise RemoteError(s.host.name, step, f"unexpected answer {last!r:.200}")
            now = doc["tag"]  # None: a first activation undone, none current
            return Switch(
                None if now is None else str(now), doc.get("previous"), bool(doc["changed"])
            )

        switch: Switch = await self._on(host, step, fn)
        return switch

    async def activate(self, host: str, tag: str) -> Switch:
        keep = ["--keep", str(self.keep)] if self.keep is not None else []
        return await self._switch(host, "activate", ["activate", tag, *keep])

    async def switch_back(self, host: str, tag: str | None, reject: str) -> Switch:
        """``roost rollback --to TAG --reject REJECT`` on the host: its history
        is as if this rollout's release had never been current there (no
        ``--to`` when it had none before: none is current again)."""
        to = ["--to", tag] if tag is not None else []
        return await self._switch(host, "rollback", ["rollback", *to, "--reject", reject])

    async def health(self, host: str, command: str, env: dict[str, str]) -> HealthResult:
        path = f"{self.dest}/{RELEASES}/{env['ROOST_TAG']}"
        assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**env, "ROOST_PATH": path}.items())
        line = (
            f"cd {shlex.quote(path)} && {assigns} timeout -k 5 {self.timeout:g} "
            f"sh -c {shlex.quote(command)} </dev/null >/dev/null"
        )

        async def fn(s: Session) -> HealthResult:
            out = await s.run(line, check=False)
            if out.exit_status == 0:
                return HealthResult(True)
            if out.exit_status in (124, 137):
                return HealthResult(False, f"timed out after {self.timeout:g}s")
            lines = out.stderr.strip().splitlines()
            tail = f": {lines[-1]}" if lines else ""
            return HealthResult(False, f"exited with status {out.exit_status}{tail}")

        try:
            result: HealthResult = await self._on(host, "health", fn, self.timeout + 30)
        except RemoteError as exc:
            return HealthResult(False, str(exc))
        return result
