"""Moving and hashing bytes fast: the hot paths of packing and extraction.

* ``copy_and_hash`` copies a byte range between files in the kernel
  (``copy_file_range``) while a worker thread reads the same range and
  computes its sha256: the cost is the slower of the two, not their sum.
* ``hash_pieces`` computes the SHA-1 of every piece of a file in two threads
  (hashlib releases the GIL), plus, if asked, the sha256 of the whole file.
* ``PieceHasher`` hashes the pieces of a file while it is still being
  written, so packing a tar and hashing its pieces is one pass.

Everything reads with ``pread``, never an mmap: a source truncated
meanwhile gives ``OSError``, not a SIGBUS.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["PieceHasher", "copy_and_hash", "hash_pieces", "sha256_range", "write_all"]

_BIG_FILE = 4 << 20  # copies at least this big hash in a worker thread
_CHUNK = 4 << 20
_KERNEL_CHUNK = 16 << 20


def copy_and_hash(
    src_fd: int,
    src_offset: int,
    size: int,
    dst_fd: int,
    progress: Callable[[int], None] | None = None,
) -> str:
    """Copy ``size`` bytes from ``src_fd`` at ``src_offset`` to ``dst_fd``'s
    current position and return their sha256 (hex).

    Big copies run in the kernel (``copy_file_range``) while a worker thread
    reads and hashes the same bytes (``pread``, never an mmap: a source
    truncated meanwhile gives a short read, not a SIGBUS), so the cost is the
    slower of the two rather than their sum. ``progress(n)`` is called as
    each chunk of ``n`` bytes lands. Raises ``OSError`` (a short source
    included).
    """
    if size < _BIG_FILE:
        data = os.pread(src_fd, size, src_offset)
        if len(data) != size:
            raise OSError(f"short read: {len(data)} of {size} bytes")
        write_all(dst_fd, data)
        if progress:
            progress(size)
        return hashlib.sha256(data).hexdigest()
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(sha256_range, src_fd, src_offset, size)
        try:
            _kernel_copy(src_fd, src_offset, size, dst_fd, progress or _ignore)
        finally:
            result = digest.result()
    return result


def sha256_range(fd: int, offset: int, size: int) -> str:
    """sha256 of ``size`` bytes of ``fd`` from ``offset`` (``OSError`` if short)."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    end = offset + size
    while offset < end:
        n = os.preadv(fd, [view[: min(_CHUNK, end - offset)]], offset)
        if n == 0:
            raise OSError(f"short read: file ended {end - offset} bytes early")
        digest.update(view[:n])
        offset += n
    return digest.hexdigest()


_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


def _ignore(_: int) -> None:
    pass


def _kernel_copy(
    src_fd: int, offset: int, size: int, dst_fd: int, progress: Callable[[int], None]
) -> None:
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src_fd, dst_fd, min(_KERNEL_CHUNK, size - done), offset + done)
            if n == 0:
                raise OSError(f"short read: {done} of {size} bytes")
            done += n
            progress(n)
    except OSError as exc:
        if done or exc.errno not in _NO_KERNEL_COPY:
            raise
        # Not supported here (old kernel, odd file system): plain writes.
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while done < size:
            n = os.preadv(src_fd, [view[: min(_CHUNK, size - done)]], offset + done)
            if n == 0:
                raise OSError(f"short read: {done} of {size} bytes") from None
            write_all(dst_fd, view[:n])
            done += n
            progress(n)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[: 16 << 20])
        view = view[written:]


def hash_pieces(path: Path, piece_size: int, *, with_sha256: bool = False) -> tuple[bytes, str]:
    """SHA-1 of every piece of ``path`` (concatenated) and, if asked, the
    sha256 of the whole file (else ""), in two threads (hashlib drops the
    GIL). ``OSError`` if the file shrinks meanwhile."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        count = -(-size // piece_size)
        group = max(1, (32 << 20) // piece_size)  # ~32 MiB of pieces per task

        def sha1_group(first: int) -> bytes:
            buf = bytearray(piece_size)
            view = memoryview(buf)
            out = []
            for index in range(first, min(first + group, count)):
                want = min(piece_size, size - index * piece_size)
                got = os.preadv(fd, [view[:want]], index * piece_size)
                if got != want:
                    raise OSError(f"{path} changed while hashing")
                out.append(hashlib.sha1(view[:want]).digest())
            return b"".join(out)

        with ThreadPoolExecutor(2) as pool:
            whole = pool.submit(sha256_range, fd, 0, size) if with_sha256 else None
            pieces = b"".join(pool.map(sha1_group, range(0, count, group)))
            return pieces, whole.result() if whole else ""
    finally:
        os.close(fd)


class PieceHasher:
    """SHA-1 of each piece of a file while another thread is still writing
    it: ``advance(n)`` says n more bytes landed, ``finish()`` hashes the tail
    and returns the concatenated digests. Reads back through the page cache
    with ``pread`` on its own descriptor."""

    def __init__(self, path: Path, piece_size: int):
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._piece = piece_size
        self._ready = 0
        self._closed = False
        self._cond = threading.Condition()
        self._digests: list[bytes] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="roost-sha1", daemon=True)
        self._thread.start()

    def advance(self, n: int) -> None:
        with self._cond:
            self._ready += n
            if self._ready % self._piece < n or n >= self._piece:
                self._cond.notify()

    def finish(self, *, abort: bool = False) -> bytes:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        os.close(self._fd)
        if self._error is not None and not abort:
            raise self._error
        return b"".join(self._digests)

    def _run(self) -> None:
        view = memoryview(bytearray(self._piece))
        pos = 0
        try:
            while True:
                with self._cond:
                    while self._ready - pos < self._piece and not self._closed:
                        self._cond.wait()
                    ready, closed = self._ready, self._closed
                while ready - pos >= self._piece or (closed and pos < ready):
                    want = min(self._piece, ready - pos)
                    if os.preadv(self._fd, [view[:want]], pos) != want:
                        raise OSError("short read of the tar being written")
                    self._digests.append(hashlib.sha1(view[:want]).digest())
                    pos += want
                if closed:
                    return
        except BaseException as exc:  # handed to finish()
            self._error = exc
