"""docs/FORMAT.md matches layout.py; structures round-trip."""

import numpy as np
from formatdoc import contiguous, field_table, read_doc

from diskvault.format.layout import (INDEX_DTYPE, EXTENTS_DTYPE, Footer, Header, Section,
                                     header_fields, struct_sizes)
from diskvault.fs import extents as ext

DOC = read_doc("FORMAT.md")


def test_header_table_matches_struct():
    rows = field_table(DOC, "## 4. Header")
    sizes = struct_sizes()
    assert contiguous(rows) == sizes["header"]
    documented = {f for _, _, f in rows}
    for name in header_fields():
        if name not in ("version",):
            assert name in documented, name
    fixed_end = [o for o, _, f in rows if f == "reserved" and o > 100][0]
    assert fixed_end == sizes["header_fixed"]


def test_index_and_extent_tables_match_dtypes():
    rows = field_table(DOC, "## 6. Index section")
    assert contiguous(rows) == INDEX_DTYPE.itemsize == 64
    assert [f for _, _, f in rows] == list(INDEX_DTYPE.names)
    for off, size, name in rows:
        assert INDEX_DTYPE.fields[name][1] == off and INDEX_DTYPE.fields[name][0].itemsize == size
    rows = field_table(DOC, "## 7. Extents section")
    assert contiguous(rows) == EXTENTS_DTYPE.itemsize


def test_footer_and_section_tables_match():
    sizes = struct_sizes()
    assert contiguous(field_table(DOC, "## 9. Sections")) == sizes["section"]
    assert contiguous(field_table(DOC, "## 10. Footer")) == sizes["footer"]


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
