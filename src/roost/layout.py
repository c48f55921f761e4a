"""Where a multi-file torrent's bytes are: its files, pad files and pieces.

A v1 multi-file torrent is one byte stream cut into pieces, the files laid
end to end in their listed order. roost's tree releases (``kind: "tree"``)
follow BEP 47: after every file that does not end on a piece boundary comes
a pad file (``attr`` ``p``, path ``.pad/N``, N zero bytes that no client
writes to disk), so every file starts on a piece boundary and each piece
holds the bytes of one file only. Hence:

* a file's pieces depend on that file alone: a host holding an unchanged
  file from an earlier release holds its pieces too (incremental deploys);
* a piece is a prefix of one file's bytes plus zeros (``piece_extent``), so
  the origin's feed sends one range of one file and the receiver pads it.

Pure: no I/O, no libtorrent. ``unsafe_file_list`` checks a foreign
torrent's file list with the same path rules extraction applies.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from roost.manifest import MANIFEST_NAME, unsafe_name_reason

__all__ = [
    "Layout",
    "TorrentFile",
    "padded_files",
    "unsafe_file_list",
]

PAD_DIR = ".pad"


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
    """The torrent's file list for ``(path, length)`` in order, with a pad
    file after each one that does not end on a piece boundary (none after
    the last: nothing follows it)."""
    out: list[TorrentFile] = []
    for path, length in files:
        if out and (pad := -_data_end(out) % piece_size):
            out.append(TorrentFile(f"{PAD_DIR}/{pad}", pad, "p"))
        out.append(TorrentFile(path, length))
    return out


def _data_end(files: Sequence[TorrentFile]) -> int:
    return sum(f.length for f in files)


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
    def aligned(self) -> bool:
        """Every real file with bytes starts on a piece boundary."""
        return all(
            self.offsets[i] % self.piece_size == 0
            for i in self.data_files()
            if self.files[i].length
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

    def piece_extent(self, piece: int) -> tuple[int, int, int]:
        """``(file index, offset in that file, bytes)`` of piece ``piece``'s
        data in an aligned layout; the rest of the piece is pad (zeros).
        ``ValueError`` if the piece holds bytes of two real files."""
        begin = piece * self.piece_size
        index = bisect.bisect_right(self.offsets, begin) - 1
        f = self.files[index]
        if f.is_pad or self.offsets[index] + f.length <= begin:
            raise ValueError(f"piece {piece} does not start with a file's bytes")
        offset = begin - self.offsets[index]
        length = min(self.piece_length(piece), f.length - offset)
        rest = begin + length
        end = begin + self.piece_length(piece)
        for after in range(index + 1, len(self.files)):
            if self.offsets[after] >= end:
                break
            if not self.files[after].is_pad and self.files[after].length and rest < end:
                raise ValueError(f"piece {piece} holds bytes of two files")
        return index, offset, length


def unsafe_file_list(files: Sequence[TorrentFile]) -> tuple[str, str] | None:
    """``(path, reason)`` for the first file a torrent must not write, or
    None: the rules extraction applies to a tar (no absolute path, no
    ``..``, normalised names, no duplicates, no file where another needs a
    directory), checked before a byte is downloaded. Pad files are never
    written, but their names are checked all the same."""
    kinds: dict[str, str] = {}
    for f in files:
        reason = unsafe_name_reason(f.path)
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
