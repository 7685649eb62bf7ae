"""GPT and MBR parsers against tables made by sgdisk/sfdisk, checked with sfdisk --json, sgdisk -i
and partx (libblkid); damaged, truncated, looping and partition-less images."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import struct
import subprocess
import zlib

import pytest

from diskvault.disk import gpt, mbr
from diskvault.disk.table import PartitionTable, read_partition_table
from diskvault.errors import PartitionTableError

MiB = 1 << 20
EFI = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def run(*args: str, input: str | None = None) -> str:
    proc = subprocess.run(list(args), input=input, text=True, capture_output=True)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def blank(path, mib: int) -> str:
    with open(path, "wb") as f:
        f.truncate(mib * MiB)
    return str(path)


def parse(path, sector_size: int = 512) -> PartitionTable:
    with open(path, "rb") as fh:
        return read_partition_table(fh, os.path.getsize(path), sector_size)


def sfdisk_json(path, sector_size: int | None = None) -> dict:
    args = ["sfdisk", "--json", str(path)]
    if sector_size:
        args[1:1] = ["--sector-size", str(sector_size)]
    return json.loads(run(*args))["partitiontable"]


def partx(path) -> dict[int, dict]:
    """libblkid's view: NR -> {START, SECTORS, TYPE, UUID, NAME, FLAGS}."""
    out = run("partx", "-o", "NR,START,SECTORS,TYPE,UUID,NAME,FLAGS", "-P", str(path))
    rows = [{k: _unescape(v) for k, v in re.findall(r'(\w+)="([^"]*)"', line)} for line in out.splitlines()]
    return {int(r["NR"]): r for r in rows}


def _unescape(value: str) -> str:
    """partx -P writes non-ASCII bytes as \\xNN."""
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  value.encode()).decode("utf-8")


def region_map(table: PartitionTable) -> dict[str, tuple[int, int]]:
    return {r.what: (r.start, r.size) for r in table.regions}


def flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def sgdisk_info(path, number: int) -> dict[str, str]:
    out = run("sgdisk", "-i", str(number), str(path))
    info = {}
    for line in out.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    return info


# ----------------------------------------------------------------------------- GPT


@pytest.fixture(scope="module")
def gpt_image(tmp_path_factory) -> str:
    path = blank(tmp_path_factory.mktemp("gpt") / "gpt.img", 48)
    run("sgdisk",
        "-n1:2048:+4M", "-t1:ef00", "-c1:EFI system", "-A1:set:0",
        "-n2:0:+8M", "-t2:8300", "-c2:root part", "-A2:set:2", "-A2:set:60",
        "-n4:0:+6M", "-t4:8200", "-c4:swap",
        "-n7:0:0", "-t7:0700", "-c7:données ünïcode", "-A7:set:63",
        path)
    return path


def test_gpt_matches_sfdisk_sgdisk_and_partx(gpt_image):
    table = parse(gpt_image)
    ref = sfdisk_json(gpt_image)
    blk = partx(gpt_image)
    assert table.kind == "gpt" and ref["label"] == "gpt"
    assert table.sector_size == 512 and table.disk_size == 48 * MiB
    assert table.disk_id == ref["id"].lower()
    assert table.warnings == []
    assert [p.number for p in table.partitions] == [1, 2, 4, 7]
    assert len(ref["partitions"]) == 4
    for p, r in zip(table.partitions, ref["partitions"]):
        assert r["node"].endswith(str(p.number))
        assert (p.start // 512, p.size // 512) == (r["start"], r["size"])
        assert p.type == r["type"].lower()
        assert p.uuid == r["uuid"].lower()
        assert p.name == r.get("name", "")
        assert p.kind == "primary"
        info = sgdisk_info(gpt_image, p.number)
        assert info["Partition GUID code"].split()[0].lower() == p.type
        assert info["Partition unique GUID"].lower() == p.uuid
        assert int(info["First sector"].split()[0]) * 512 == p.start
        assert (int(info["Last sector"].split()[0]) + 1) * 512 == p.end
        assert int(info["Attribute flags"], 16) == p.attributes
        assert info["Partition name"].strip("'") == p.name
        b = blk[p.number]
        assert (int(b["START"]), int(b["SECTORS"])) == (p.start // 512, p.size // 512)
        assert (b["TYPE"], b["UUID"], b["NAME"]) == (p.type, p.uuid, p.name)
        assert int(b["FLAGS"], 16) == p.attributes
    assert table.partition(2).attributes == (1 << 2) | (1 << 60)
    assert table.partition(7).attributes == 1 << 63
    assert table.partition(7).name == "données ünïcode"
    assert table.partition(1).type == EFI.lower()


def test_gpt_regions(gpt_image):
    table = parse(gpt_image)
    size = 48 * MiB
    regions = {r.what: (r.start, r.size) for r in table.regions}
    assert regions == {
        "mbr": (0, 512),
        "gpt-primary-header": (512, 512),
        "gpt-primary-entries": (1024, 128 * 128),
        "gpt-backup-entries": (size - 512 - 128 * 128, 128 * 128),
        "gpt-backup-header": (size - 512, 512),
    }
    assert [r.start for r in table.regions] == sorted(r.start for r in table.regions)
    with open(gpt_image, "rb") as f:
        f.seek(512)
        assert f.read(8) == b"EFI PART"
        f.seek(size - 512)
        assert f.read(8) == b"EFI PART"
    # no partition overlaps a table region
    for p in table.partitions:
        for r in table.regions:
            assert p.end <= r.start or r.start + r.size <= p.start


def test_round_trip_dict(gpt_image):
    table = parse(gpt_image)
    again = PartitionTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again == table


def test_gpt_from_any_file_position(gpt_image):
    with open(gpt_image, "rb") as f:
        data = f.read()
    fh = io.BytesIO(data)
    fh.seek(12345)
    assert gpt.read(fh, len(data)) == parse(gpt_image)


def test_damaged_primary_header_uses_backup(gpt_image, tmp_path):
    good = parse(gpt_image)
    img = shutil.copy(gpt_image, tmp_path / "bad-primary.img")
    flip(img, 512 + 60)  # inside the disk GUID: header CRC no longer matches
    table = parse(img)
    assert table.kind == "gpt"
    assert table.partitions == good.partitions
    assert table.disk_id == good.disk_id
    assert any("primary GPT header damaged" in w and "CRC" in w for w in table.warnings)
    assert region_map(table) == region_map(good)


def test_damaged_primary_entries_use_backup(gpt_image, tmp_path):
    good = parse(gpt_image)
    img = shutil.copy(gpt_image, tmp_path / "bad-entries.img")
    flip(img, 1024 + 128 + 60)  # name of partition 2 in the primary array
    table = parse(img)
    assert table.partitions == good.partitions
    assert any("entries CRC32 mismatch" in w for w in table.warnings)


def test_damaged_primary_signature_uses_backup(gpt_image, tmp_path):
    good = parse(gpt_image)
    img = shutil.copy(gpt_image, tmp_path / "no-sig.img")
    flip(img, 512)
    table = parse(img)
    assert table.partitions == good.partitions
    assert any("primary GPT header damaged (missing)" in w for w in table.warnings)


def test_damaged_backup_header_warns(gpt_image, tmp_path):
    good = parse(gpt_image)
    img = shutil.copy(gpt_image, tmp_path / "bad-backup.img")
    flip(img, 48 * MiB - 512 + 40)
    table = parse(img)
    assert table.partitions == good.partitions
    assert any("backup GPT header damaged or missing" in w for w in table.warnings)
    # the bytes where the backup lives are still table regions (stored exactly)
    assert region_map(table) == region_map(good)


def test_damaged_backup_entries_warns(gpt_image, tmp_path):
    img = shutil.copy(gpt_image, tmp_path / "bad-backup-entries.img")
    flip(img, 48 * MiB - 512 - 128 * 128 + 5)
    table = parse(img)
    assert any("backup GPT header damaged or missing" in w and "entries CRC32" in w for w in table.warnings)


def test_both_headers_damaged_raises(gpt_image, tmp_path):
    img = shutil.copy(gpt_image, tmp_path / "both.img")
    flip(img, 512 + 60)
    flip(img, 48 * MiB - 512 + 60)
    with pytest.raises(PartitionTableError, match="corrupt GPT: primary: header CRC32 mismatch; backup: LBA 98303: header CRC32"):
        parse(img)


def test_grown_disk_finds_backup_where_primary_says(gpt_image, tmp_path):
    good = parse(gpt_image)
    img = shutil.copy(gpt_image, tmp_path / "grown.img")
    with open(img, "r+b") as f:
        f.truncate(64 * MiB)
    table = parse(img)
    assert table.partitions == good.partitions
    assert any("not at the last LBA" in w for w in table.warnings)
    regions = {r.what: (r.start, r.size) for r in table.regions}
    assert regions["gpt-backup-header"] == (48 * MiB - 512, 512)


def test_truncated_disk(tmp_path):
    img = blank(tmp_path / "trunc.img", 16)
    run("sgdisk", "-n1:2048:+4M", img)
    with open(img, "r+b") as f:
        f.truncate(8 * MiB)  # partition 1 still inside; backup gone
    table = parse(img)
    assert [p.number for p in table.partitions] == [1]
    assert any("backup GPT header damaged or missing" in w for w in table.warnings)
    assert any("beyond the end of the disk" in w for w in table.warnings)
    assert {r.what for r in table.regions} == {"mbr", "gpt-primary-header", "gpt-primary-entries"}
    with open(img, "r+b") as f:
        f.truncate(4 * MiB)  # now partition 1 is cut off
    with pytest.raises(PartitionTableError, match="partition 1 .* beyond the end of the disk"):
        parse(img)


def test_gpt_4096_byte_sectors(tmp_path):
    img = blank(tmp_path / "4k.img", 32)
    # sfdisk 2.38 has no --sector-size; fdisk -b does
    run("fdisk", "-b", "4096", img, input="g\nn\n1\n256\n+1023\nn\n2\n1280\n+2047\nt\n2\n1\nw\n")
    out = run("fdisk", "-b", "4096", "-l", "-o", "Device,Start,Sectors,Type-UUID,UUID", img)
    disk_id = re.search(r"Disk identifier: (\S+)", out).group(1).lower()
    want = [(int(m[0]), int(m[1]), m[2].lower(), m[3].lower())
            for m in re.findall(r"^\S+img\d\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)$", out, re.M)]
    assert len(want) == 2
    for asked in (512, 4096):
        table = parse(img, asked)
        assert table.kind == "gpt" and table.sector_size == 4096
        assert table.disk_id == disk_id
        assert table.warnings == []
        assert [(p.start // 4096, p.size // 4096, p.type, p.uuid) for p in table.partitions] == want
        assert table.partition(2).type == EFI.lower()
        regions = {r.what: (r.start, r.size) for r in table.regions}
        assert regions["mbr"] == (0, 4096)
        assert regions["gpt-primary-header"] == (4096, 4096)
        assert regions["gpt-primary-entries"] == (8192, 4 * 4096)
        assert regions["gpt-backup-header"] == (32 * MiB - 4096, 4096)


def test_gpt_without_protective_mbr_is_not_gpt(gpt_image, tmp_path):
    img = shutil.copy(gpt_image, tmp_path / "no-pmbr.img")
    with open(img, "r+b") as f:
        f.seek(446)
        f.write(bytes(64))
    assert gpt.read(open(img, "rb"), os.path.getsize(img)) is None


def _rewrite_header(data: bytearray, lba: int, **fields) -> None:
    """Change header fields at ``lba`` and fix its CRC (to reach the checks behind the CRC)."""
    names = ["sig", "rev", "size", "crc", "res", "my", "alt", "first", "last", "guid", "elba", "n", "esize",
             "ecrc"]
    off = lba * 512
    values = dict(zip(names, struct.unpack_from(gpt.HEADER_FORMAT, data, off)))
    values.update(fields)
    values["crc"] = 0
    struct.pack_into(gpt.HEADER_FORMAT, data, off, *[values[k] for k in names])
    crc = zlib.crc32(bytes(data[off:off + values["size"]]))
    struct.pack_into("<I", data, off + 16, crc)


@pytest.mark.parametrize("fields,problem", [
    ({"size": 40}, "header size 40 invalid"),
    ({"my": 5}, "header says it is at LBA 5"),
    ({"esize": 100}, "entry size 100 invalid"),
    ({"n": 100000}, "entry count 100000 too large"),
    ({"elba": 1 << 40}, "lies outside the disk"),
    ({"elba": 1}, "overlaps the header"),
    ({"elba": 100}, "overlaps the usable area"),
    ({"first": 1 << 40}, "usable LBA range"),
    ({"first": 1}, "usable LBA range"),
])
def test_gpt_header_field_validation(gpt_image, fields, problem):
    with open(gpt_image, "rb") as f:
        data = bytearray(f.read())
    good = gpt.read(io.BytesIO(bytes(data)), len(data))
    _rewrite_header(data, 1, **fields)
    table = gpt.read(io.BytesIO(bytes(data)), len(data))
    assert table.partitions == good.partitions  # from the backup
    assert any(problem in w for w in table.warnings), table.warnings


def test_gpt_bad_partition_entry_raises(gpt_image):
    with open(gpt_image, "rb") as f:
        data = bytearray(f.read())
    for entries_off, hdr_lba in ((1024, 1), (len(data) - 512 - 128 * 128, len(data) // 512 - 1)):
        struct.pack_into("<QQ", data, entries_off + 32, 5000, 4000)  # partition 1: first > last
        array_crc = zlib.crc32(bytes(data[entries_off:entries_off + 16384]))
        struct.pack_into("<I", data, hdr_lba * 512 + 88, array_crc)
        _rewrite_header(data, hdr_lba)
    with pytest.raises(PartitionTableError, match="partition 1 first LBA 5000 is after its last LBA 4000"):
        gpt.read(io.BytesIO(bytes(data)), len(data))


def test_gpt_fuzz_never_crashes(tmp_path):
    img = blank(tmp_path / "small.img", 1)
    run("sgdisk", "-n1:34:+200", "-n2:0:+100", "-c2:x", img)
    with open(img, "rb") as f:
        orig = f.read()
    rng = random.Random(5)
    outcomes = set()
    for i in range(400):
        data = bytearray(orig)
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.5:
                pos = rng.choice([rng.randrange(0, 512), rng.randrange(512, 604),
                                  rng.randrange(len(data) - 512, len(data) - 420)])
            else:
                pos = rng.randrange(1024, 1024 + 256)
            data[pos] = rng.randrange(256)
        if i % 2:  # re-sign both headers so the field checks behind the CRC are exercised
            for lba in (1, len(data) // 512 - 1):
                if data[lba * 512:lba * 512 + 8] == b"EFI PART":
                    try:
                        _rewrite_header(data, lba)
                    except (struct.error, KeyError, ValueError, MemoryError):
                        pass
        try:
            table = read_partition_table(io.BytesIO(bytes(data)), len(data))
            outcomes.add(table.kind)
            for p in table.partitions:
                assert 0 <= p.start and p.end <= len(data)
        except PartitionTableError:
            outcomes.add("error")
    assert "gpt" in outcomes


# ----------------------------------------------------------------------------- MBR


@pytest.fixture(scope="module")
def mbr_image(tmp_path_factory) -> str:
    path = blank(tmp_path_factory.mktemp("mbr") / "mbr.img", 40)
    script = ("label: dos\nlabel-id: 0xdeadbeef\n"
              "start=2048, size=4M, type=83\n"
              ",6M,82\n"
              ",,5\n"
              ",4M,83\n"
              ",5M,7\n"
              ",,c\n")
    run("sfdisk", "-q", path, input=script)
    return path


def test_mbr_matches_sfdisk_and_partx(mbr_image):
    table = parse(mbr_image)
    ref = sfdisk_json(mbr_image)
    blk = partx(mbr_image)
    assert table.kind == "mbr" and ref["label"] == "dos"
    assert table.disk_id == "deadbeef" == ref["id"].removeprefix("0x")
    assert table.warnings == []
    assert [p.number for p in table.partitions] == [1, 2, 3, 5, 6, 7]
    assert [p.kind for p in table.partitions] == ["primary", "primary", "extended", "logical", "logical",
                                                  "logical"]
    assert [p.number for p in table.data_partitions()] == [1, 2, 5, 6, 7]
    for p, r in zip(table.partitions, ref["partitions"]):
        assert r["node"].endswith(str(p.number))
        assert (p.start // 512, p.size // 512) == (r["start"], r["size"])
        assert int(p.type, 16) == int(r["type"], 16)
        assert p.attributes == (0x80 if r.get("bootable") else 0)
        b = blk[p.number]
        assert (int(b["START"]), int(b["SECTORS"])) == (p.start // 512, p.size // 512)
        assert p.uuid == b["UUID"] == f"deadbeef-{p.number:02x}"
        assert int(b["TYPE"], 16) == int(p.type, 16)
    assert table.partition(6).type == "0x07"
    assert table.partition(7).type == "0x0c"


def test_mbr_regions_cover_every_ebr(mbr_image):
    table = parse(mbr_image)
    ext = table.partition(3)
    assert table.regions[0].what == "mbr" and (table.regions[0].start, table.regions[0].size) == (0, 512)
    ebrs = [r for r in table.regions if r.what == "ebr"]
    assert len(ebrs) == 3 and ebrs[0].start == ext.start
    with open(mbr_image, "rb") as f:
        for r, logical in zip(ebrs, [table.partition(n) for n in (5, 6, 7)]):
            assert r.size == 512 and ext.start <= r.start < logical.start <= ext.end
            f.seek(r.start)
            sector = f.read(512)
            assert sector[510:] == b"\x55\xaa"
            first = mbr.parse_entries(sector)[0]
            assert r.start + first.start * 512 == logical.start


def test_mbr_active_partition(tmp_path):
    img = blank(tmp_path / "active.img", 8)
    run("sfdisk", "-q", img, input="label: dos\nlabel-id: 0x00c0ffee\n,2M,83\n,2M,b,*\n")
    table = parse(img)
    ref = sfdisk_json(img)
    assert [p.attributes for p in table.partitions] == [0, 0x80]
    assert [bool(r.get("bootable")) for r in ref["partitions"]] == [False, True]
    assert table.partition(2).type == "0x0b"
    assert table.partition(2).uuid == "00c0ffee-02"


def test_mbr_without_partitions(tmp_path):
    img = blank(tmp_path / "empty-label.img", 4)
    run("sfdisk", "-q", img, input="label: dos\nlabel-id: 0x01020304\n")
    table = parse(img)
    assert (table.kind, table.disk_id, table.partitions) == ("mbr", "01020304", [])


def _mbr_bytes(entries: list[tuple[int, int, int, int]], size: int, disk_id: int = 0x11223344) -> bytearray:
    data = bytearray(size)
    struct.pack_into("<I", data, 440, disk_id)
    for i, (boot, ptype, start, sectors) in enumerate(entries):
        struct.pack_into("<B3xB3xII", data, 446 + 16 * i, boot, ptype, start, sectors)
    data[510:512] = b"\x55\xaa"
    return data


def _ebr(data: bytearray, lba: int, first: tuple[int, int, int], link: tuple[int, int] | None) -> None:
    off = lba * 512
    struct.pack_into("<B3xB3xII", data, off + 446, 0, *first)
    if link:
        struct.pack_into("<B3xB3xII", data, off + 462, 0, 0x05, *link)
    data[off + 510:off + 512] = b"\x55\xaa"


def test_ebr_chain_loop_is_stopped():
    data = _mbr_bytes([(0, 0x0F, 100, 900)], 1000 * 512)
    _ebr(data, 100, (0x83, 10, 50), (200, 100))   # logical 5 at 110, next EBR at 300
    _ebr(data, 300, (0x83, 10, 50), (0, 100))     # logical 6 at 310, next EBR: back to 100
    table = mbr.read(io.BytesIO(bytes(data)), len(data))
    assert [(p.number, p.start // 512) for p in table.data_partitions()] == [(5, 110), (6, 310)]
    assert any("loops" in w for w in table.warnings)
    assert [r.start // 512 for r in table.regions if r.what == "ebr"] == [100, 300]


def test_ebr_without_data_partition_takes_no_number():
    data = _mbr_bytes([(0, 0x05, 100, 900)], 1000 * 512)
    _ebr(data, 100, (0, 0, 0), (100, 100))         # empty first EBR (first logical deleted)
    _ebr(data, 200, (0x83, 2, 98), (200, 100))
    _ebr(data, 300, (0x82, 2, 98), None)
    table = mbr.read(io.BytesIO(bytes(data)), len(data))
    assert [(p.number, p.start // 512, p.size // 512, p.type) for p in table.data_partitions()] == [
        (5, 202, 98, "0x83"), (6, 302, 98, "0x82")]
    assert table.warnings == []


def test_ebr_link_outside_extended_and_missing_signature():
    data = _mbr_bytes([(0, 0x05, 100, 300)], 1000 * 512)
    _ebr(data, 100, (0x83, 2, 50), (500, 10))  # link beyond the extended partition
    table = mbr.read(io.BytesIO(bytes(data)), len(data))
    assert [p.number for p in table.data_partitions()] == [5]
    assert any("outside extended partition 1" in w for w in table.warnings)
    data[100 * 512 + 510] = 0
    table = mbr.read(io.BytesIO(bytes(data)), len(data))
    assert table.data_partitions() == [] and any("no 0x55aa signature" in w for w in table.warnings)


def test_mbr_partition_beyond_disk_raises():
    data = _mbr_bytes([(0, 0x83, 2048, 10_000)], 4096 * 512)
    with pytest.raises(PartitionTableError, match="partition 1 .* beyond the end of the disk"):
        mbr.read(io.BytesIO(bytes(data)), len(data))


def test_bad_boot_flag_is_not_mbr():
    data = _mbr_bytes([(0x12, 0x83, 2048, 100)], 4096 * 512)
    assert mbr.read(io.BytesIO(bytes(data)), len(data)) is None


def test_hybrid_protective_without_gpt_is_mbr_with_warning():
    data = _mbr_bytes([(0, 0xEE, 1, 0xFFFFFFFF)], 4096 * 512)
    table = read_partition_table(io.BytesIO(bytes(data)), len(data))
    assert table.kind == "mbr"
    assert table.partitions[0].end == len(data)
    assert any("protective" in w for w in table.warnings)


def test_mbr_fuzz_never_crashes(tmp_path):
    img = blank(tmp_path / "fuzz.img", 2)
    run("sfdisk", "-q", img, input="label: dos\nstart=64, size=500, type=83, bootable\nstart=600, type=5\n"
                                   "start=700, size=300, type=83\nstart=1100, size=200, type=7\n"
                                   "start=1400, type=82\n")
    with open(img, "rb") as f:
        orig = f.read()
    ebr_sectors = [r.start for r in parse(img).regions]
    assert len(ebr_sectors) == 4
    rng = random.Random(9)
    for _ in range(300):
        data = bytearray(orig)
        for _ in range(rng.randint(1, 3)):
            base = rng.choice(ebr_sectors)
            data[base + rng.randrange(440, 512)] = rng.randrange(256)
        try:
            table = read_partition_table(io.BytesIO(bytes(data)), len(data))
        except PartitionTableError:
            continue
        for p in table.partitions:
            assert p.start >= 0 and p.end <= len(data)


# ----------------------------------------------------------------------------- no table


def test_zero_file_has_no_table(tmp_path):
    img = blank(tmp_path / "zero.img", 2)
    table = parse(img)
    assert (table.kind, table.partitions, table.regions, table.warnings) == ("none", [], [], [])
    assert parse(blank(tmp_path / "tiny.img", 0)).kind == "none"


@pytest.mark.parametrize("mkfs", [["mkfs.vfat"], ["mkfs.vfat", "-F", "32"], ["mkfs.ntfs", "-F", "-Q"],
                                  ["mkfs.exfat"]])
def test_whole_device_filesystem_is_not_a_table(tmp_path, mkfs):
    if shutil.which(mkfs[0]) is None:
        pytest.skip(f"{mkfs[0]} not installed")
    img = blank(tmp_path / "fs.img", 40)
    run(*mkfs, img)
    with open(img, "rb") as f:
        assert f.read(512)[510:] == b"\x55\xaa"  # signed like an MBR ...
    assert parse(img).kind == "none"  # ... but not one
