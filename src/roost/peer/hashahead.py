"""A download's files hashed while their pieces arrive (the worker's), so
that the install at the end need not read them again (``roost.extract``).

A file or tree release installs by hard-linking each file out of the
download and checking its sha256 against the manifest: alone, that is a
read of the whole release after its last piece, on every host at once.
:class:`HashAhead` reads each file's bytes in order, as soon as the pieces
holding them have been verified (the engine's have-list, as it was one
poll earlier: their writes have landed), into a running sha256. When the
download is complete, :meth:`HashAhead.finish` hashes what is left and
writes ``hashed.json`` beside the download: each file's digest with its
inode, size and mtime. The install takes a digest only for the same inode
with the same size and mtime, and only if it is the manifest's; anything
else (bytes read before a write landed, a file changed since) is hashed
again as before. So nothing here is needed for
correctness; it only moves the reading off the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost._fs import atomic_write

log = logging.getLogger(__name__)

#: the record beside the download (``work_dir``), read by the front's install
HASHED = "hashed.json"
#: how often the have-list is read
POLL = 0.25
_CHUNK = 1 << 20
#: files looked at past the first one that cannot go on, per poll
_LOOKAHEAD = 64


@dataclass
class _File:
    name: str  # as the install names its source: relative to the download's root
    start: int  # offset in the torrent's data
    size: int
    done: int = 0  # bytes hashed, from the file's start
    digest: Any = field(default_factory=hashlib.sha256)


class HashAhead:
    """Hashes ``files`` (``(name, offset in the torrent, size)``, real files
    only, in torrent order) under ``root`` as ``have()`` (the torrent's
    per-piece list) allows, on a thread of its own."""

    def __init__(
        self,
        root: Path,
        files: Sequence[tuple[str, int, int]],
        piece_size: int,
        have: Callable[[], Sequence[bool]],
    ):
        self.root = Path(root)
        self.piece_size = piece_size
        self.have = have
        self._files = [_File(name, start, size) for name, start, size in files if size > 0]
        self._first = 0  # files before this one are hashed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, meta: Any, download: Path, have: Callable[[], Sequence[bool]]) -> HashAhead | None:
        """For a release the install links out of the download (a file or a
        tree release with a manifest); None for a tar (its install reads the
        tar anyway) or a torrent made by another tool (nothing to check)."""
        if meta.manifest_sha256 is None or meta.kind == "tar":
            return None
        if meta.files is None:
            return cls(download, [(meta.name, 0, meta.length)], meta.piece_size, have)
        layout = meta.layout
        files = [(layout.files[i].path, layout.offsets[i], layout.files[i].length)
                 for i in layout.data_files()]  # fmt: skip
        return cls(download / meta.name, files, meta.piece_size, have)

    def start(self) -> HashAhead:
        self._thread = threading.Thread(target=self._run, name="roost-hash-ahead", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        earlier: Sequence[bool] = ()
        try:
            while not self._stop.wait(POLL):
                if earlier and self.advance(earlier):
                    return
                earlier = self.have()  # its pieces' writes have landed by the next poll
        except OSError as exc:  # the install hashes what is not done
            log.debug("hashing ahead stopped: %s", exc)

    def advance(self, have: Sequence[bool]) -> bool:
        """Hash every file's next bytes that ``have`` covers; True once every
        file is hashed. Raises ``OSError``."""
        stuck = 0
        i = self._first
        while i < len(self._files) and stuck <= _LOOKAHEAD and not self._stop.is_set():
            f = self._files[i]
            if f.done < f.size:
                ready = self._ready(f, have)
                if ready > f.done:
                    self._read(f, ready)
                stuck += f.done < f.size
            if f.done == f.size and i == self._first:
                self._first += 1
            i += 1
        return self._first == len(self._files)

    def _ready(self, f: _File, have: Sequence[bool]) -> int:
        """How far from its start ``f``'s bytes are all in verified pieces."""
        at, end = f.start + f.done, f.start + f.size
        piece = at // self.piece_size
        while at < end and piece < len(have) and have[piece]:
            piece += 1
            at = min(end, piece * self.piece_size)
        return at - f.start

    def _read(self, f: _File, upto: int) -> None:
        fd = os.open(self.root / f.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            buf = memoryview(bytearray(min(_CHUNK, upto - f.done)))
            while f.done < upto:
                n = os.preadv(fd, [buf[: min(_CHUNK, upto - f.done)]], f.done)
                if n == 0:
                    raise OSError(f"{f.name}: shorter than {upto} bytes")
                f.digest.update(buf[:n])
                f.done += n
        finally:
            os.close(fd)

    def finish(self, record: Path) -> int:
        """Once the download is complete (every piece had, flushed): stop the
        thread, hash what is left, write ``record``; the files hashed."""
        self.stop()
        try:
            self.advance([True] * (-(-self._end() // self.piece_size)))
            doc = {}
            for f in self._files:
                st = os.stat(self.root / f.name, follow_symlinks=False)
                doc[f.name] = [f.digest.hexdigest(), st.st_ino, st.st_size, st.st_mtime_ns]
            atomic_write(record, json.dumps(doc).encode())
        except OSError as exc:
            log.debug("hashing ahead did not finish: %s", exc)
            return 0
        return len(doc)

    def _end(self) -> int:
        return max((f.start + f.size for f in self._files), default=0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._stop.clear()


def read_hashed(record: Path) -> dict[str, tuple[str, int, int, int]]:
    """``hashed.json``: name -> (sha256, inode, size, mtime_ns); {} if it is
    missing or not one."""
    try:
        doc = json.loads(record.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    out = {}
    for name, value in doc.items():
        if (
            isinstance(value, list)
            and len(value) == 4
            and isinstance(value[0], str)
            and all(isinstance(v, int) for v in value[1:])
        ):
            out[name] = (value[0], value[1], value[2], value[3])
    return out
