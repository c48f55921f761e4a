"""Moving and hashing bytes fast: the hot paths of packing and extraction.

Theory of operation. When bytes are copied (a tar packed, a release
extracted), each is read once, into one of a few reused buffers (from the
source, or back from the destination after a kernel copy), and everything
that needs it reads that buffer: the SHA-1 of the
pieces, the sha256 of a file, the write to the destination. They run in
threads (hashlib releases the GIL on buffers over 2 KiB, ``os.preadv`` and
``os.write`` always do), so on two cores the cost is about the slowest of
them, the sequential sha256 of the biggest file (~1.7 GB/s with SHA-NI),
rather than their sum; and what is hashed is what is written, never a
second read that could differ from it.

* ``hash_pieces`` (a file as is): the SHA-1 of the pieces and the sha256
  of the file in two threads, each reading its own copy (measured faster
  than sharing one read for page-cache-resident files).
* ``TarWriter`` assembles a tar in buffers: headers are copied in, small
  files are read straight into them, each full buffer goes out in one
  ``write`` while the two workers hash it (SHA-1 of the pieces of the whole
  stream, sha256 of each file's segments); big files are copied by the
  kernel (``copy_file_range``) and hashed as read back from the tar.
* ``copy_and_hash`` copies a byte range and returns the sha256 of what it
  wrote; a big copy moves chunks in the caller (kernel copy and read back,
  or read and write) while a worker hashes them.
  It can start the write-back of what it wrote (``start_writeback``), so
  that extraction's final ``sync_filesystem`` finds little left to do.

Everything reads with ``pread``, never an mmap: a source truncated
meanwhile gives ``OSError``, not a SIGBUS.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from pathlib import Path
from typing import Any, cast

from roost._fs import fsync_directory

__all__ = [
    "PieceStream",
    "TarWriter",
    "copy_and_hash",
    "fsync_directory",
    "hash_files",
    "hash_pieces",
    "libc_function",
    "sha256_range",
    "start_writeback",
    "sync_filesystem",
    "write_all",
]

_CHUNK = 4 << 20  # one buffer of a ring
_RING = 3  # buffers: one being filled, two being hashed/written
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>
# Writes of 1 MiB and more into ext4 cost this kernel (6.18) up to several
# times the CPU of 512 KiB ones, erratically (bench/NOTES.md): write in
# slices, and keep the tar's buffers that small.
_WRITE_SLICE = 512 << 10
_TAR_BUFFER = 512 << 10
_TAR_RING = 8  # 4 MiB in flight, like the other rings
_KERNEL_COPY_MIN = 1 << 20  # files from this size on are copied by copy_file_range
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


def copy_and_hash(
    src_fd: int,
    src_offset: int,
    size: int,
    dst_fd: int,
    *,
    writeback: bool = False,
    read_back: bool = False,
) -> str:
    """Copy ``size`` bytes from ``src_fd`` at ``src_offset`` to ``dst_fd``'s
    current position and return the sha256 (hex) of the bytes written.

    A copy bigger than one chunk is pipelined: this thread moves the bytes
    while a worker hashes the chunk just moved. With ``read_back`` (the
    caller opened ``dst_fd`` read-write), the kernel copies them
    (``copy_file_range``; a reflink on XFS/btrfs) and each chunk is read
    back from ``dst_fd`` to be hashed; where the kernel cannot (another
    file system), and otherwise, they are read into a buffer, hashed and
    written from it. Either way the digest is of the bytes written. With
    ``writeback``, the kernel is asked to start writing ``dst_fd`` to disk
    after each chunk (``start_writeback``), so a later sync has little left
    to do. Raises ``OSError`` (a source shorter than ``size`` included).
    """
    if size <= _CHUNK:
        view = _scratch(size)
        _read_into(src_fd, view, src_offset)
        digest = hashlib.sha256(view)
        write_all(dst_fd, view)
        if writeback:
            start_writeback(dst_fd)
        return digest.hexdigest()
    whole = hashlib.sha256()
    ring = _Ring(2)
    kernel = read_back
    position = os.lseek(dst_fd, 0, os.SEEK_CUR) if read_back else 0
    with ThreadPoolExecutor(1, thread_name_prefix="roost-sha256") as pool:
        try:
            done = 0
            while done < size:
                view = ring.next()[: min(_CHUNK, size - done)]
                if kernel:
                    try:
                        n = os.copy_file_range(src_fd, dst_fd, len(view), src_offset + done)
                    except OSError as exc:
                        if done or exc.errno not in _NO_KERNEL_COPY:
                            raise
                        kernel = False
                    else:
                        if n == 0:
                            raise OSError(f"short read: {done} of {size} bytes")
                        view = view[:n]
                        _read_into(dst_fd, view, position + done)
                        ring.busy(pool.submit(whole.update, view))
                if not kernel:
                    _read_into(src_fd, view, src_offset + done)
                    ring.busy(pool.submit(whole.update, view))
                    write_all(dst_fd, view)
                if writeback:
                    start_writeback(dst_fd)
                done += len(view)
            ring.drain()
        finally:
            ring.settle()
    return whole.hexdigest()


_local = threading.local()


def _scratch(size: int) -> memoryview:
    """This thread's reusable buffer, ``size`` bytes of it (at most a chunk):
    no allocation (and page faults) per small file."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(_CHUNK))
    return buf[:size]


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages to disk now,
    without waiting for them (``sync_file_range(SYNC_FILE_RANGE_WRITE)``;
    nothing where libc lacks it). Errors are ignored: only a later
    fsync/syncfs can say the data is safe, and it reports them."""
    fn = libc_function(
        "sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
    )
    if fn is not None:
        fn(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


@functools.cache
def libc_function(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """The C library's function ``name`` (returning int, errno kept for
    ``ctypes.get_errno``), or None where it lacks it."""
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError):
        return None
    fn.argtypes, fn.restype = list(argtypes), ctypes.c_int
    return cast("Callable[..., int]", fn)


def sync_filesystem(path: Path) -> None:
    """Make everything written on ``path``'s file system durable: one
    syncfs(2) (much cheaper than an fsync per file; it waits for the data
    and the directory entries), os.sync() where libc lacks syncfs. Cheap
    when the files' write-back was started as they were written
    (``copy_and_hash(writeback=True)``). Raises ``OSError`` (a write-back
    error included)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs = _libc_syncfs()
        if syncfs is None:
            os.sync()
        elif syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}")
    finally:
        os.close(fd)


def _libc_syncfs() -> Callable[[int], int] | None:
    return libc_function("syncfs", ctypes.c_int)


def sha256_range(fd: int, offset: int, size: int) -> str:
    """sha256 of ``size`` bytes of ``fd`` from ``offset`` (``OSError`` if short)."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(min(_CHUNK, size)))
    end = offset + size
    while offset < end:
        n = os.preadv(fd, [view[: min(_CHUNK, end - offset)]], offset)
        if n == 0:
            raise OSError(f"short read: file ended {end - offset} bytes early")
        digest.update(view[:n])
        offset += n
    return digest.hexdigest()


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:_WRITE_SLICE])
        view = view[written:]


def _read_into(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError(f"short read: the file ended {len(view) - done} bytes early")
        done += n


class _Ring:
    """A few reused buffers; a buffer is handed out again only once every
    future that read it has finished."""

    def __init__(self, count: int = _RING, size: int = _CHUNK):
        self._bufs = [memoryview(bytearray(size)) for _ in range(count)]
        self._users: list[list[Future[Any]]] = [[] for _ in range(count)]
        self._at = -1

    def next(self) -> memoryview:
        self._at = (self._at + 1) % len(self._bufs)
        users, self._users[self._at] = self._users[self._at], []
        for future in users:
            future.result()
        return self._bufs[self._at]

    def busy(self, *futures: Future[Any]) -> None:
        """The current buffer is in use until ``futures`` are done."""
        self._users[self._at].extend(futures)

    def drain(self) -> None:
        """Wait for every user; raise the first error."""
        for users in self._users:
            for future in users:
                future.result()
        self._users = [[] for _ in self._bufs]

    def settle(self) -> None:
        """Wait for every user, ignoring errors (cleanup after a failure)."""
        wait_all([f for users in self._users for f in users])


class PieceStream:
    """SHA-1 of each ``piece_size`` piece of a stream fed in order, in
    slices of any size (a piece may span several)."""

    def __init__(self, piece_size: int):
        self._piece = piece_size
        self._open = hashlib.sha1()
        self._filled = 0
        self._digests: list[bytes] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        piece, sha1 = self._piece, hashlib.sha1
        if self._filled:
            take = min(len(view), piece - self._filled)
            self._open.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == piece:
                self._digests.append(self._open.digest())
                self._open, self._filled = sha1(), 0
        whole = len(view) - len(view) % piece
        self._digests += [sha1(view[i : i + piece]).digest() for i in range(0, whole, piece)]
        if whole < len(view):
            self._open.update(view[whole:])
            self._filled = len(view) - whole

    def finish(self) -> bytes:
        """The concatenated digests, the last (short) piece included."""
        if self._filled:
            self._digests.append(self._open.digest())
            self._open, self._filled = hashlib.sha1(), 0
        return b"".join(self._digests)


def hash_pieces(
    path: Path, piece_size: int, *, with_sha256: bool = False, pad_last: bool = False
) -> tuple[bytes, str]:
    """SHA-1 of every piece of ``path`` (concatenated) and, if asked, the
    sha256 of the whole file (else ""), in two threads. ``OSError`` if the
    file shrinks meanwhile. With ``pad_last`` a short last piece is hashed
    with zeros up to ``piece_size``: the file is followed by a BEP 47 pad
    file in a multi-file torrent (``roost.layout``).

    Here each thread reads its own copy of the bytes: from the page cache a
    read costs ~0.12 s/GiB and leaves the data hot in the hashing core's
    cache; sharing one read between the threads measured slower (1 GiB:
    0.77 s best vs 0.78-0.84 s, bench/NOTES.md). The sequential sha256 is
    the critical path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        count = -(-size // piece_size)
        group = max(1, (32 << 20) // piece_size)  # ~32 MiB of pieces per task

        def sha1_group(first: int) -> bytes:
            view = memoryview(bytearray(piece_size))
            out = []
            for index in range(first, min(first + group, count)):
                want = min(piece_size, size - index * piece_size)
                _read_into(fd, view[:want], index * piece_size)
                if pad_last and want < piece_size:
                    view[want:] = bytes(piece_size - want)
                    want = piece_size
                out.append(hashlib.sha1(view[:want]).digest())
            return b"".join(out)

        with ThreadPoolExecutor(2) as pool:
            whole = pool.submit(sha256_range, fd, 0, size) if with_sha256 else None
            pieces = b"".join(pool.map(sha1_group, range(0, count, group)))
            return pieces, whole.result() if whole else ""
    finally:
        os.close(fd)


def hash_files(
    paths: list[Path], piece_size: int, *, pad_last: bool = False
) -> tuple[bytes, list[str]]:
    """SHA-1 of every piece of ``paths`` laid end to end (a run of a tree
    release's small files, roost.layout), and each file's sha256, in one
    pass on this thread. With ``pad_last`` a short last piece is hashed
    with zeros up to ``piece_size`` (a pad follows the run)."""
    pieces = PieceStream(piece_size)
    digests = []
    view = memoryview(bytearray(0))  # grown to the largest file, _CHUNK at most
    total = 0
    for path in paths:
        whole = hashlib.sha256()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if len(view) < min(size, _CHUNK):
                view = memoryview(bytearray(min(size, _CHUNK)))
            for offset in range(0, size, _CHUNK):
                n = min(_CHUNK, size - offset)
                _read_into(fd, view[:n], offset)
                whole.update(view[:n])
                pieces.update(view[:n])
        finally:
            os.close(fd)
        total += size
        digests.append(whole.hexdigest())
    if pad_last and total % piece_size:
        pieces.update(bytes(piece_size - total % piece_size))
    return pieces.finish(), digests


class TarWriter:
    """Write a byte stream (a tar) to ``fd`` through reused buffers, hashing
    it on the way: the SHA-1 of each piece of the whole stream, and the
    sha256 of each file added with ``add_file``.

    ``add(bytes)`` appends headers and padding; ``add_file(src_fd, size)``
    appends a file's bytes and returns its sha256 object, complete once
    ``wait_digests()`` returned. A small file is read straight into the
    buffer. A big one is copied in the kernel (``copy_file_range``: no trip
    through user space, a reflink on XFS/btrfs) and each copied chunk is
    read back from ``fd`` (opened read-write) for hashing, so what is hashed
    is what the tar holds; where the kernel cannot copy (another file
    system), it goes through the buffer. ``finish()`` writes the rest and
    returns the concatenated piece digests; ``close()`` stops the workers
    (always call it). Raises ``OSError``.
    """

    def __init__(self, fd: int, piece_size: int):
        self._fd = fd
        self._stream = PieceStream(piece_size)
        self._s256 = ThreadPoolExecutor(1, thread_name_prefix="roost-sha256")
        self._s1 = ThreadPoolExecutor(1, thread_name_prefix="roost-sha1")
        self._ring = _Ring(_TAR_RING, _TAR_BUFFER)
        self._buf = self._ring.next()
        self._fill = 0
        self._flushed = 0
        self._segments: list[tuple[Any, memoryview]] = []
        self._kernel_copy = True

    def tell(self) -> int:
        return self._flushed + self._fill

    def add(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), len(self._buf) - self._fill)
            self._buf[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == len(self._buf):
                self._flush()

    def add_file(self, src_fd: int, size: int) -> Any:
        """Append ``size`` bytes of ``src_fd`` (from offset 0); ``OSError``
        if it is shorter."""
        digest = hashlib.sha256()
        done = 0
        if size >= _KERNEL_COPY_MIN and self._kernel_copy:
            if self._fill:
                self._flush()
            done = self._copy_in_kernel(src_fd, size, digest)
        while done < size:
            end = min(len(self._buf), self._fill + size - done)
            n = os.preadv(src_fd, [self._buf[self._fill : end]], done)
            if n == 0:
                raise OSError(f"short read: the file ended {size - done} bytes early")
            self._segments.append((digest, self._buf[self._fill : self._fill + n]))
            self._fill += n
            done += n
            if self._fill == len(self._buf):
                self._flush()
        return digest

    def _copy_in_kernel(self, src_fd: int, size: int, digest: Any) -> int:
        """Copy what the kernel will copy; hash it read back from the tar.
        How many bytes were copied (0 where copy_file_range is refused)."""
        done = 0
        while done < size:
            try:
                n = os.copy_file_range(src_fd, self._fd, min(len(self._buf), size - done), done)
            except OSError as exc:
                if done or exc.errno not in _NO_KERNEL_COPY:
                    raise
                self._kernel_copy = False  # not here: every file goes through the buffer
                return 0
            if n == 0:
                raise OSError(f"short read: the file ended {size - done} bytes early")
            view = self._buf[:n]
            _read_into(self._fd, view, self._flushed)
            self._ring.busy(
                self._s256.submit(digest.update, view), self._s1.submit(self._stream.update, view)
            )
            self._flushed += n
            self._buf = self._ring.next()
            done += n
        return done

    def wait_digests(self) -> None:
        """Return once every file added so far is hashed."""
        self._hash_segments()
        self._s256.submit(_nothing).result()

    def finish(self) -> bytes:
        if self._fill:
            self._flush()
        self._ring.drain()
        return self._stream.finish()

    def close(self) -> None:
        self._ring.settle()
        self._s256.shutdown()
        self._s1.shutdown()

    def _hash_segments(self) -> None:
        if self._segments:
            segments, self._segments = self._segments, []
            self._ring.busy(self._s256.submit(_update_all, segments))

    def _flush(self) -> None:
        view = self._buf[: self._fill]
        self._hash_segments()
        self._ring.busy(self._s1.submit(self._stream.update, view))
        write_all(self._fd, view)
        self._flushed += self._fill
        self._buf = self._ring.next()
        self._fill = 0


def _update_all(segments: list[tuple[Any, memoryview]]) -> None:
    for digest, view in segments:
        digest.update(view)


def _nothing() -> None:
    pass
