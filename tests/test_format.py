"""docs/FORMAT.md matches layout.py; structures round-trip."""

import os
import re

import numpy as np

from diskvault.format.layout import (INDEX_DTYPE, EXTENTS_DTYPE, Footer, Header, Section,
                                     header_fields, struct_sizes)
from diskvault.fs import extents as ext

DOC = open(os.path.join(os.path.dirname(__file__), "..", "docs", "FORMAT.md")).read()


def _table(title: str) -> list[tuple[int, int, str]]:
    """(offset, size, field) rows of the table under the heading containing ``title``."""
    part = DOC.split(title, 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (\d+) \| [^|]+ \| (\w+) \|", part, re.MULTILINE)
    return [(int(o), int(s), f) for o, s, f in rows]


def _contiguous(rows):
    pos = 0
    for off, size, _ in rows:
        assert off == pos, f"gap or overlap at {off}"
        pos += size
    return pos


def test_header_table_matches_struct():
    rows = _table("## 4. Header")
    sizes = struct_sizes()
    assert _contiguous(rows) == sizes["header"]
    documented = {f for _, _, f in rows}
    for name in header_fields():
        if name not in ("version",):
            assert name in documented, name
    fixed_end = [o for o, _, f in rows if f == "reserved" and o > 100][0]
    assert fixed_end == sizes["header_fixed"]


def test_index_and_extent_tables_match_dtypes():
    rows = _table("## 6. Index section")
    assert _contiguous(rows) == INDEX_DTYPE.itemsize == 64
    assert [f for _, _, f in rows] == list(INDEX_DTYPE.names)
    for off, size, name in rows:
        assert INDEX_DTYPE.fields[name][1] == off and INDEX_DTYPE.fields[name][0].itemsize == size
    rows = _table("## 7. Extents section")
    assert _contiguous(rows) == EXTENTS_DTYPE.itemsize


def test_footer_and_section_tables_match():
    sizes = struct_sizes()
    assert _contiguous(_table("## 9. Sections")) == sizes["section"]
    assert _contiguous(_table("## 10. Footer")) == sizes["footer"]


def test_header_footer_roundtrip_and_crc():
    h = Header(image_id=b"\x01" * 8, increment=3, created_ns=123, disk_size=1 << 30, writer="w")
    raw = h.pack()
    assert len(raw) == 4096 and Header.unpack(raw) == h
    f = Footer(image_id=b"\x01" * 8, chunk_count=2)
    f.sections[0] = Section(4096, 10, 20, b"x" * 24)
    assert Footer.unpack(f.pack()) == f
    bad = bytearray(raw)
    bad[100] ^= 1
    try:
        Header.unpack(bytes(bad))
    except ValueError as e:
        assert "checksum" in str(e)
    else:
        raise AssertionError("damaged header accepted")


def test_extent_helpers():
    bits = np.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=bool)
    assert ext.from_bitmap(bits, 4096).tolist() == [[4096, 8192], [16384, 4096], [28672, 4096]]
    assert ext.merge(np.array([[10, 5], [0, 4], [4, 2], [12, 10]])).tolist() == [[0, 6], [10, 12]]
    assert ext.complement(np.array([[10, 5]]), 20).tolist() == [[0, 10], [15, 5]]
    assert ext.intersect(np.array([[0, 10], [20, 10]]), np.array([[5, 20]])).tolist() == [[5, 5], [20, 5]]
    assert ext.clip(np.array([[0, 10], [20, 10]]), 5, 25).tolist() == [[5, 5], [20, 5]]
    assert ext.unpack_bits(b"\x05", 4).tolist() == [True, False, True, False]
