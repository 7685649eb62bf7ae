"""CellReader: used bytes from the source, zeros elsewhere, the same with and without O_DIRECT."""

import os

import numpy as np

from diskvault.format import codec
from diskvault.format.layout import CODEC_NONE, CODEC_ZSTD
from diskvault.format.reader import ImageFile
from diskvault.imaging.create import ImageOptions, create_image
from diskvault.imaging.pipeline import CellReader, cells_for
from diskvault.imaging.verify import verify_image

KiB, MiB = 1 << 10, 1 << 20


def _expected(disk: bytes, extents: np.ndarray, start: int, end: int) -> bytes:
    want = bytearray(end - start)
    for s, n in extents.tolist():
        a, b = max(s, start), min(s + n, end)
        if a < b:
            want[a - start:b - start] = disk[a:b]
    return bytes(want)


def _direct_supported(path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        return True
    except OSError:
        return False


def test_cells_read_alike_direct_or_buffered(tmp_path):
    size = 3 * MiB + 1000  # an unaligned tail: the last cell is read buffered
    disk = os.urandom(size)
    path = tmp_path / "disk.img"
    path.write_bytes(disk)
    extents = np.array([
        [100, 5000],                    # unaligned at both ends
        [200 * KiB + 7, 30 * KiB],      # a gap under READ_THROUGH_GAP from the next: read through
        [240 * KiB + 3, 1],
        [MiB - 10, 20],                 # across a cell boundary
        [2 * MiB + 512, 900 * KiB],     # far from the last one
        [3 * MiB + 4000, 1000],         # ends at the unaligned end of the disk
    ], dtype=np.int64)
    fd = os.open(path, os.O_RDONLY)
    try:
        direct = CellReader(fd, extents, MiB, size)
        buffered = CellReader(fd, extents, MiB, size)
        buffered._direct_fd = None
        for cell in cells_for(extents, MiB).tolist():
            start, end = cell * MiB, min((cell + 1) * MiB, size)
            want = _expected(disk, extents, start, end)
            got_direct, read_direct = direct.read(cell)
            assert bytes(got_direct) == want, cell
            got_buffered, read_buffered = buffered.read(cell)
            assert bytes(got_buffered) == want, cell
            assert read_direct == read_buffered, cell
        if _direct_supported(path):  # and no read fell back to buffered for good
            assert direct._direct_fd is not None
    finally:
        os.close(fd)


def test_given_bytes_come_from_the_base_and_are_not_read(tmp_path):
    """A partly known cell: the given pairs are copied from the base (the parent's cell), the rest
    of the used bytes read (direct reads round out to blocks, over given bytes too), the rest zero."""
    size = 2 * MiB
    disk, base = os.urandom(size), os.urandom(MiB)
    path = tmp_path / "disk.img"
    path.write_bytes(disk)
    extents = np.array([[100, 300 * KiB], [400 * KiB + 5, 200 * KiB], [MiB - 10, 20]], dtype=np.int64)
    given = [(1000, 100 * KiB + 3), (200 * KiB, 300 * KiB + 100), (400 * KiB + 5, 450 * KiB),
             (550 * KiB, 600 * KiB + 5)]  # inside the used pairs of cell 0, some touching their ends
    want = bytearray(_expected(disk, extents, 0, MiB))
    for a, b in given:
        want[a:b] = base[a:b]
    fd = os.open(path, os.O_RDONLY)
    try:
        direct = CellReader(fd, extents, MiB, size)
        buffered = CellReader(fd, extents, MiB, size)
        buffered._direct_fd = None
        unknown = sum(b - a for a, b in direct.used_in(0, MiB)) - sum(b - a for a, b in given)
        for reader in (direct, buffered):
            got, read = reader.read(0, given, base)
            assert bytes(got) == bytes(want)
            assert read == unknown  # the gaps between unknown bytes are over READ_THROUGH_GAP
    finally:
        os.close(fd)


def test_writable_source_is_not_read_direct(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(MiB))
    fd = os.open(path, os.O_RDWR)
    try:
        assert CellReader(fd, np.array([[0, MiB]]), MiB, MiB)._direct_fd is None
    finally:
        os.close(fd)


def test_stored_hash_is_the_hash_of_the_stored_bytes(tmp_path):
    """Raw cells reuse their content hash as stored hash: it must be BLAKE3 of the bytes in the file."""
    disk = tmp_path / "disk.img"
    half = os.urandom(2 * MiB)
    disk.write_bytes(half + bytes(2 * MiB) + half[:MiB] * 2 + os.urandom(MiB) + b"text " * (MiB // 5))
    (tmp_path / "img").mkdir()
    res = create_image(ImageOptions(source=str(disk), to=str(tmp_path / "img"), chunk_size=MiB))
    with ImageFile(res.image) as im:
        codecs = set()
        for i, rec in enumerate(im.index):
            if rec["stored_length"]:
                codecs.add(int(rec["codec"]))
                assert bytes(rec["stored_hash"]) == codec.content_hash(im.read_stored(i)), i
    assert codecs == {CODEC_NONE, CODEC_ZSTD}
    assert verify_image(res.image).ok
