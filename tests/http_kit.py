"""A hostile HTTP server for fetch tests: it answers every connection with
scripted bytes, ``delay`` seconds apart (a slow drip), on 127.0.0.1:0."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path


class ScriptedServer:
    """Each connection reads the request head, then gets ``chunks`` one by one,
    ``delay`` seconds apart, then is closed."""

    def __init__(self, chunks: Sequence[bytes], *, delay: float = 0.0):
        self.chunks = list(chunks)
        self.delay = delay
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> ScriptedServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head and (data := conn.recv(4096)):
                    head += data
                self.requests.append(head)
                for chunk in self.chunks:
                    if self._stop.wait(self.delay):
                        return
                    conn.sendall(chunk)
            except OSError:
                return


def drip(response: bytes) -> list[bytes]:
    """``response`` one byte at a time."""
    return [response[i : i + 1] for i in range(len(response))]


def elapsed(since: float) -> float:
    return time.monotonic() - since


def make_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (IP SAN) made with the openssl CLI."""
    cert, key = directory / "origin.pem", directory / "origin.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=roost-origin",
            "-addext", f"subjectAltName=IP:{host}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
