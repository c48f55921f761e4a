"""Where a multi-file torrent's bytes are: its files, pad files and pieces.

A v1 multi-file torrent is one byte stream cut into pieces, the files laid
end to end in their listed order. roost's tree releases (``kind: "tree"``)
use BEP 47 pad files (``attr`` ``p``, path ``.pad/N``, N zero bytes that no
client writes to disk) so that:

* a file of :data:`OWN_PIECES` bytes or more has pieces of its own (it
  starts on a piece boundary and a pad follows it): a host holding it
  unchanged from an earlier release holds its pieces too (incremental
  deploys);
* smaller files lie end to end in runs, each run starting on a piece
  boundary. libtorrent requests whole 16 KiB blocks, so a block holding a
  file's end and pad travels whole: a pad after every small file made a
  tree of small files travel 1.5-1.8 times over (bench/NOTES.md). A run
  begins before a small file whose path hashes to one in :data:`RUN`
  (content-defined: adding or removing a file reshapes its own run only)
  and after a file with pieces of its own;
* every pad ends on a piece boundary: a piece is its files' bytes and then
  zeros (``piece_segments``), so the origin's feed sends the bytes and the
  receiver adds the zeros.

Pure: no I/O, no libtorrent. ``unsafe_file_list`` checks a foreign
torrent's file list with the same path rules extraction applies.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from roost.manifest import MANIFEST_NAME, torrent_name_reason, unsafe_name_reason

__all__ = [
    "Layout",
    "TorrentFile",
    "padded_files",
    "unsafe_file_list",
]

PAD_DIR = ".pad"
#: a file this long has pieces of its own in a tree release
OWN_PIECES = 64 * 1024
#: a small file starts a run of small files where its path hashes to one in RUN
RUN = 16


@dataclass(frozen=True)
class TorrentFile:
    """One entry of a torrent's ``files`` list; ``path`` is relative to the
    torrent's ``name`` (the root directory)."""

    path: str
    length: int
    attr: str = ""  # BEP 47: p pad, x executable, h hidden, l symlink

    @property
    def is_pad(self) -> bool:
        return "p" in self.attr


def padded_files(files: Iterable[tuple[str, int]], piece_size: int) -> list[TorrentFile]:
    """The torrent's file list for ``(path, length)`` in order, with pads so
    that a file of :data:`OWN_PIECES` bytes or more starts on a piece
    boundary with a pad after it, and smaller files lie end to end in runs
    that start on one (none after the last file: nothing follows it)."""
    out: list[TorrentFile] = []
    end = 0  # where the next file would start
    own = False  # the file before has pieces of its own
    for path, length in files:
        boundary = out and (own or length >= OWN_PIECES or starts_run(path))
        if boundary and (pad := -end % piece_size):
            out.append(TorrentFile(f"{PAD_DIR}/{pad}", pad, "p"))
            end += pad
        out.append(TorrentFile(path, length))
        end += length
        own = length >= OWN_PIECES
    return out


def starts_run(path: str) -> bool:
    """Whether a small file at ``path`` begins a new run."""
    return zlib.crc32(path.encode()) % RUN == 0


@dataclass(frozen=True)
class Layout:
    """A torrent's files and piece size, with each file's offset."""

    piece_size: int
    files: tuple[TorrentFile, ...]
    offsets: tuple[int, ...] = field(init=False, repr=False)
    total: int = field(init=False)

    def __post_init__(self) -> None:
        offsets, at = [], 0
        for f in self.files:
            offsets.append(at)
            at += f.length
        object.__setattr__(self, "offsets", tuple(offsets))
        object.__setattr__(self, "total", at)

    @property
    def num_pieces(self) -> int:
        return -(-self.total // self.piece_size)

    @property
    def data_bytes(self) -> int:
        """Bytes of real files (pads excluded): what lands on disk."""
        return sum(f.length for f in self.files if not f.is_pad)

    def data_files(self) -> list[int]:
        """Indices of the real (non-pad) files, in order."""
        return [i for i, f in enumerate(self.files) if not f.is_pad]

    @property
    def pads_end_pieces(self) -> bool:
        """Every pad ends on a piece boundary: each piece is the bytes of
        its files and then zeros (what the feed relies on)."""
        return all(
            (self.offsets[i] + f.length) % self.piece_size == 0
            for i, f in enumerate(self.files)
            if f.is_pad and f.length
        )

    def file_pieces(self, index: int) -> range:
        """The pieces holding bytes of file ``index`` (empty for an empty file)."""
        length = self.files[index].length
        if not length:
            return range(0)
        start = self.offsets[index]
        return range(start // self.piece_size, (start + length - 1) // self.piece_size + 1)

    def piece_length(self, piece: int) -> int:
        return min(self.piece_size, self.total - piece * self.piece_size)

    def piece_segments(self, piece: int) -> list[tuple[int, int, int]]:
        """``(file index, offset in that file, bytes)`` of each real file's
        bytes in piece ``piece``, in order; what follows them in the piece is
        pad (zeros). ``ValueError`` if a file's bytes follow a pad there."""
        begin = piece * self.piece_size
        end = begin + self.piece_length(piece)
        index = bisect.bisect_right(self.offsets, begin) - 1
        out: list[tuple[int, int, int]] = []
        padded = False
        for i in range(max(index, 0), len(self.files)):
            start, f = self.offsets[i], self.files[i]
            if start >= end:
                break
            if not f.length or start + f.length <= begin:
                continue
            if f.is_pad:
                padded = True
                continue
            if padded:
                raise ValueError(f"piece {piece} holds a file's bytes after a pad")
            offset = max(begin, start) - start
            out.append((i, offset, min(end, start + f.length) - start - offset))
        return out

    def piece_files(self, piece: int) -> list[int]:
        """The real files with bytes in piece ``piece``."""
        return [i for i, _, _ in self.piece_segments(piece)]


def unsafe_file_list(files: Sequence[TorrentFile]) -> tuple[str, str] | None:
    """``(path, reason)`` for the first file a torrent must not write, or
    None: the rules extraction applies to a tar (no absolute path, no
    ``..``, normalised names, no duplicates, no file where another needs a
    directory), checked before a byte is downloaded. Pad files are never
    written, but their names are checked all the same."""
    kinds: dict[str, str] = {}
    for f in files:
        reason = unsafe_name_reason(f.path) or (None if f.is_pad else torrent_name_reason(f.path))
        if reason:
            return f.path, reason
        if "l" in f.attr and not f.is_pad:
            return f.path, "is a symlink entry (BEP 47 attr l), which roost does not install"
        if f.is_pad:
            continue
        if f.path == MANIFEST_NAME:
            return f.path, "uses a name roost reserves"
        if f.path in kinds:
            return f.path, "appears twice" if kinds[f.path] == "file" else "is also a directory"
        kinds[f.path] = "file"
        parts = f.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if kinds.setdefault(parent, "dir") == "file":
                return f.path, f"lies below the file {parent!r}"
    return None
