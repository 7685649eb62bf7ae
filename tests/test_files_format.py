"""docs/FILES-FORMAT.md matches files/layout.py; headers, footers and catalog records round-trip."""

import dataclasses
import struct

import pytest
from formatdoc import contiguous, field_table, read_doc

from diskvault.files.catalog import Entry, decode, iter_entries, scan
from diskvault.files.layout import ENTRY, INDEX_DTYPE, ArchiveFooter, ArchiveHeader, Section, struct_sizes

DOC = read_doc("FILES-FORMAT.md")


def test_header_table_matches_struct():
    rows = field_table(DOC, "## 4. Header")
    sizes = struct_sizes()
    assert contiguous(rows) == sizes["header"]
    documented = {f for _, _, f in rows}
    for f in dataclasses.fields(ArchiveHeader):
        assert f.name in documented, f.name
    assert [o for o, _, f in rows if f == "reserved" and o > 200][0] == sizes["header_fixed"]


def test_index_entry_footer_tables_match():
    sizes = struct_sizes()
    rows = field_table(DOC, "## 6. Index section")
    assert contiguous(rows) == INDEX_DTYPE.itemsize == 64
    for off, size, name in rows:
        assert INDEX_DTYPE.fields[name][1] == off and INDEX_DTYPE.fields[name][0].itemsize == size
    assert contiguous(field_table(DOC, "## 7. Catalog section")) == sizes["entry_fixed"] == ENTRY.size
    assert contiguous(field_table(DOC, "## 9. Sections")) == sizes["section"]
    rows = field_table(DOC, "## 10. Footer")
    assert contiguous(rows) == sizes["footer"]
    assert [o for o, _, f in rows if f == "index"][0] == sizes["footer_fixed"]
    assert [o for o, _, f in rows if f == "reserved" and o > 100][0] == sizes["footer_used"]
    assert f"{sizes['chunk_ref']} bytes each" in DOC and f"{sizes['xattr_head']}-byte head" in DOC


def test_header_footer_roundtrip_and_crc():
    h = ArchiveHeader(set_id=b"\x02" * 8, increment=4, created_ns=99, archive_type=2, parent_increment=3,
                      parent_digest=b"p" * 32, writer="w")
    raw = h.pack()
    assert len(raw) == 4096 and ArchiveHeader.unpack(raw) == h
    f = ArchiveFooter(set_id=b"\x02" * 8, increment=4, chunk_count=2, entry_count=7)
    f.sections[1] = Section(4096, 10, 20, b"x" * 24)
    assert ArchiveFooter.unpack(f.pack()) == f
    bad = bytearray(raw)
    bad[100] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        ArchiveHeader.unpack(bytes(bad))


def test_catalog_records_roundtrip_and_reject_garbage():
    entries = [
        Entry(b"a", 2, 0o40755, mtime_ns=-5, atime_ns=2**62),
        Entry(b"a/caf\xe9 \n", 1, 0o100644, uid=1234, gid=4321, size=10, user=b"u", group=b"g",
              xattrs=[(b"user.x", b"\0\1"), (b"system.posix_acl_access", b"acl")], chunks=[(0, 10, b"h" * 16)],
              flags=3),
        Entry(b"a/l", 3, 0o120777, link=b"/etc/passwd"),
    ]
    raw = b"".join(e.encode() for e in entries)
    assert list(iter_entries(raw)) == entries
    refs = scan(raw)
    assert raw[refs[b"a/l"].start:refs[b"a/l"].end] == entries[2].encode()
    assert refs[b"a/caf\xe9 \n"].key == (10, 0, 0, 0)
    record = bytearray(entries[1].encode())
    struct.pack_into("<I", record, 0, len(record) + 5)
    with pytest.raises(ValueError):
        decode(bytes(record))
    with pytest.raises(ValueError):
        decode(bytes(record[:50]))
