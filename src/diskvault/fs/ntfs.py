"""NTFS reader: boot sector facts, the label from $Volume and the used clusters from $Bitmap.

$Bitmap (MFT record 6) holds one bit per cluster, set = in use. Its unnamed $DATA attribute is
found through the MFT, whose own location comes from the boot sector and whose run list comes
from MFT record 0. Every MFT record read gets its update sequence array fixups applied and its
header checked. Beyond the bitmap, the boot area ($Boot's 8 KiB) and the backup boot sector (the
sector after ``number_of_sectors``, i.e. the partition's last sector) are always kept: the bitmap
does not cover the backup, and Windows and ntfsfix check it. The structures are in ``c_ntfs``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar

import numpy as np

from diskvault.errors import FilesystemError
from diskvault.readat import read_at as _read_at
from diskvault.fs import c_ntfs as C
from diskvault.fs.base import FsInfo
from diskvault.fs.extents import clip, from_bitmap, merge, unpack_bits

CHUNK_BYTES = 2 << 20  # bitmap bytes turned into extents per pass (16 Mi clusters; bounds memory)
MAX_RECORD_SIZE = 1 << 16



def _bad(what: str) -> FilesystemError:
    return FilesystemError(f"NTFS boot sector is not sane: {what}")


def _pow2(n: int) -> bool:
    return n > 0 and not n & (n - 1)


@dataclass
class Stream:
    """An attribute value: resident bytes, or runs of (vcn, lcn or -1 for sparse, clusters)."""

    data_size: int
    initialized_size: int
    resident: bytes | None = None
    runs: list[tuple[int, int, int]] = field(default_factory=list)


class NtfsReader:
    """An NTFS volume opened read-only; see the module docstring."""

    name: ClassVar[str] = "ntfs"

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        raw = _read_at(fh, 0, C.BOOT_SECTOR_SIZE)
        if len(raw) < C.BOOT_SECTOR_SIZE or raw[3:11] != C.NTFS_OEM_ID:
            return False
        try:
            cls._geometry(C.BOOT_SECTOR.parse(raw), size)
        except FilesystemError:
            return False
        return True

    @staticmethod
    def _geometry(bs: dict, size: int) -> tuple[int, int, int, int, int]:
        """(bytes per sector, cluster size, clusters, total sectors, MFT record size) or raise."""
        if bs["oem_id"] != C.NTFS_OEM_ID:
            raise FilesystemError("no NTFS boot sector (bad OEM id)")
        bps = bs["bytes_per_sector"]
        if not (256 <= bps <= 4096 and _pow2(bps)):
            raise _bad(f"{bps} bytes per sector (must be a power of two, 256..4096)")
        spc = bs["sectors_per_cluster"]
        if spc > 0x80:  # large clusters: 2^(256 - value) sectors
            spc = 1 << (256 - spc) if 256 - spc <= 16 else 0
        cs = bps * spc
        if not _pow2(spc) or cs > C.NTFS_MAX_CLUSTER_SIZE:
            raise _bad(f"sectors per cluster byte 0x{bs['sectors_per_cluster']:02x}")
        for name in C.BPB_ZERO_FIELDS:
            if bs[name]:
                raise _bad(f"{name} is {bs[name]} (must be 0)")
        total = bs["number_of_sectors"]
        if total < spc:
            raise _bad(f"{total} sectors")
        if total * bps > size:
            raise FilesystemError(
                f"NTFS volume claims {total * bps} bytes but the partition has only {size}"
            )
        clusters = total // spc
        for name in ("mft_lcn", "mftmirr_lcn"):
            if not 0 < bs[name] < clusters:
                raise _bad(f"{name} {bs[name]} lies outside the {clusters} clusters")
        v = bs["clusters_per_mft_record"]
        rs = v * cs if v > 0 else (1 << -v if -v < 32 else 0)
        if not (C.NTFS_BLOCK_SIZE <= rs <= MAX_RECORD_SIZE and _pow2(rs)):
            raise _bad(f"MFT record size byte {v} (gives {rs} bytes)")
        return bps, cs, clusters, total, rs

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh, self._size = fh, size
        raw = _read_at(fh, 0, C.BOOT_SECTOR_SIZE)
        if len(raw) < C.BOOT_SECTOR_SIZE:
            raise FilesystemError("NTFS boot sector is truncated (the partition is too small)")
        self.boot = C.BOOT_SECTOR.parse(raw)
        geo = self._geometry(self.boot, size)
        self.sector_size, self.cluster_size, self.clusters, self.total_sectors, self.record_size = geo
        self._extents: np.ndarray | None = None
        self.used_clusters = 0
        self._mft: Stream | None = None
        self._load_mft()

    # ----------------------------------------------------------------- MFT records

    def _fixup(self, buf: bytearray, what: str) -> None:
        """Undo the multi-sector transfer protection: check and restore each 512-byte block's tail."""
        usa_ofs, usa_count = struct.unpack_from("<HH", buf, 4)
        blocks = len(buf) // C.NTFS_BLOCK_SIZE
        usa_end = usa_ofs + 2 * usa_count
        if usa_ofs & 1 or usa_count - 1 != blocks or usa_ofs < 0x28 or usa_end > C.NTFS_BLOCK_SIZE - 2:
            raise FilesystemError(f"{what}: bad update sequence array (offset {usa_ofs}, count {usa_count})")
        usn = buf[usa_ofs : usa_ofs + 2]
        for i in range(blocks):
            tail = (i + 1) * C.NTFS_BLOCK_SIZE - 2
            if buf[tail : tail + 2] != usn:
                raise FilesystemError(
                    f"{what}: update sequence mismatch in block {i} (torn write; run chkdsk)"
                )
            buf[tail : tail + 2] = buf[usa_ofs + 2 + 2 * i : usa_ofs + 4 + 2 * i]

    def _record(self, recno: int, base: int | None = None) -> tuple[bytearray, dict]:
        """MFT record ``recno`` with its fixups applied, and its checked header."""
        rs, what = self.record_size, f"NTFS MFT record {recno}"
        if self._mft is None:  # bootstrapping: record 0 sits at the start of $MFT's first run
            raw = _read_at(self._fh, self.boot["mft_lcn"] * self.cluster_size, rs)
        else:
            if (recno + 1) * rs > self._mft.data_size:
                raise FilesystemError(f"{what} lies beyond the end of $MFT")
            raw = self._read_stream(self._mft, recno * rs, rs, "$MFT")
        if len(raw) != rs:
            raise FilesystemError(f"cannot read {what}")
        buf = bytearray(raw)
        if buf[:4] != b"FILE":
            state = "marked bad (BAAD)" if buf[:4] == b"BAAD" else "not a FILE record"
            raise FilesystemError(f"{what} is {state}")
        self._fixup(buf, what)
        h = C.MFT_RECORD.parse(buf)
        if h["bytes_allocated"] != rs or not h["usa_ofs"] + 2 * h["usa_count"] <= h["attrs_offset"]:
            raise FilesystemError(f"{what} has a corrupt header")
        if h["attrs_offset"] & 7 or not h["attrs_offset"] < h["bytes_in_use"] <= rs:
            raise FilesystemError(f"{what} has a corrupt header (attribute offset / bytes in use)")
        if not h["flags"] & C.MFT_RECORD_IN_USE:
            raise FilesystemError(f"{what} is not in use")
        if h["usa_ofs"] >= C.MFT_RECORD_V31_SIZE and h["mft_record_number"] != recno & 0xFFFFFFFF:
            raise FilesystemError(f"{what} says it is record {h['mft_record_number']}")
        if h["base_mft_record"] & C.MREF_MASK != (base or 0) or (base is None and h["base_mft_record"]):
            raise FilesystemError(f"{what} does not belong to base record {base or recno}")
        return buf, h

    def _attributes(self, buf: bytearray, h: dict, what: str) -> Iterator[dict]:
        """The attribute records of a record; each dict has its ``_off``set and, resident, ``_value``."""
        off, end = h["attrs_offset"], h["bytes_in_use"]
        while True:
            if off + 4 > end:
                raise FilesystemError(f"{what}: attributes run past the record's end")
            if struct.unpack_from("<I", buf, off)[0] == C.AT_END:
                return
            if off + C.RESIDENT_MIN_SIZE > end:
                raise FilesystemError(f"{what}: attributes run past the record's end")
            a = C.ATTR.parse(buf, off)
            n = a["length"]
            nonres = a["non_resident"]
            least = C.NON_RESIDENT_MIN_SIZE if nonres else C.RESIDENT_MIN_SIZE
            if nonres > 1 or n & 7 or n < least or off + n > end:
                raise FilesystemError(f"{what}: attribute 0x{a['type']:x} has a corrupt length {n}")
            if a["name_length"] and a["name_offset"] + 2 * a["name_length"] > n:
                raise FilesystemError(f"{what}: attribute 0x{a['type']:x} has its name outside it")
            a = (C.NON_RESIDENT if nonres else C.RESIDENT).parse(buf, off)
            if nonres and not C.ATTR_HEADER_SIZE < a["mapping_pairs_offset"] < n:
                raise FilesystemError(f"{what}: attribute 0x{a['type']:x} has a corrupt run list offset")
            if not nonres:
                vo, vl = a["value_offset"], a["value_length"]
                if vo < C.RESIDENT_MIN_SIZE or vo + vl > n:
                    raise FilesystemError(f"{what}: attribute 0x{a['type']:x} has its value outside it")
                a["_value"] = bytes(buf[off + vo : off + vo + vl])
            a["_off"] = off
            yield a
            off += n

    def _runs(self, buf: bytearray, a: dict, what: str) -> list[tuple[int, int, int]]:
        """Decode a non-resident attribute's mapping pairs into (vcn, lcn or -1, clusters) runs."""
        pos, end = a["_off"] + a["mapping_pairs_offset"], a["_off"] + a["length"]
        vcn, lcn, runs = a["lowest_vcn"], 0, []
        if vcn < 0:
            raise FilesystemError(f"{what}: negative lowest VCN {vcn}")
        while True:
            if pos >= end:
                raise FilesystemError(f"{what}: run list runs past the attribute's end")
            head = buf[pos]
            if head == 0:
                break
            nlen, noff = head & 0x0F, head >> 4
            if not 1 <= nlen <= 8 or noff > 8 or pos + 1 + nlen + noff > end:
                raise FilesystemError(f"{what}: corrupt run list header 0x{head:02x}")
            count = int.from_bytes(buf[pos + 1 : pos + 1 + nlen], "little", signed=True)
            if count <= 0:
                raise FilesystemError(f"{what}: run of {count} clusters")
            if noff:
                lcn += int.from_bytes(buf[pos + 1 + nlen : pos + 1 + nlen + noff], "little", signed=True)
                if lcn < 0 or lcn + count > self.clusters:
                    raise FilesystemError(f"{what}: run at cluster {lcn} (+{count}) lies outside the volume")
                runs.append((vcn, lcn, count))
            else:
                runs.append((vcn, -1, count))  # sparse: reads as zeros
            vcn += count
            pos += 1 + nlen + noff
        if a["highest_vcn"] and vcn - 1 != a["highest_vcn"]:
            raise FilesystemError(f"{what}: run list ends at VCN {vcn - 1}, not {a['highest_vcn']}")
        return runs

    def _data(self, recno: int, partial: bool = False) -> Stream:
        """The unnamed $DATA attribute of base record ``recno``, following an $ATTRIBUTE_LIST."""
        what = f"NTFS MFT record {recno}"
        buf, h = self._record(recno)
        attrs = list(self._attributes(buf, h, what))
        lists = [a for a in attrs if a["type"] == C.AT_ATTRIBUTE_LIST]
        pieces = [(buf, a) for a in attrs if a["type"] == C.AT_DATA and not a["name_length"]]
        if lists and not partial:
            pieces = []
            for e in self._attribute_list(buf, lists[0], what):
                if e["type"] != C.AT_DATA or e["name_length"]:
                    continue
                ref = e["mft_reference"] & C.MREF_MASK
                xbuf, xattrs = buf, attrs
                if ref != recno:
                    xbuf, xh = self._record(ref, base=recno)
                    xattrs = list(self._attributes(xbuf, xh, f"NTFS MFT record {ref}"))
                match = [a for a in xattrs if a["type"] == C.AT_DATA and not a["name_length"]
                         and a["instance"] == e["instance"]]
                if len(match) != 1:
                    raise FilesystemError(f"{what}: $ATTRIBUTE_LIST names a $DATA not in record {ref}")
                pieces.append((xbuf, match[0]))
        return self._stream(pieces, what, partial)

    def _attribute_list(self, buf: bytearray, a: dict, what: str) -> Iterator[dict]:
        if a["non_resident"]:
            st = self._stream([(buf, a)], f"{what} $ATTRIBUTE_LIST", False)
            if st.data_size > C.ATTR_LIST_MAX_SIZE:
                raise FilesystemError(f"{what}: $ATTRIBUTE_LIST of {st.data_size} bytes is corrupt")
            value = self._read_stream(st, 0, st.data_size, f"{what} $ATTRIBUTE_LIST")
        else:
            value = a["_value"]
        pos = 0
        while pos + C.ATTR_LIST_ENTRY_MIN_SIZE <= len(value):
            e = C.ATTR_LIST_ENTRY.parse(value, pos)
            if e["length"] < C.ATTR_LIST_ENTRY_MIN_SIZE or pos + e["length"] > len(value):
                raise FilesystemError(f"{what}: corrupt $ATTRIBUTE_LIST entry at {pos}")
            yield e
            pos += e["length"]

    def _stream(self, pieces: list[tuple[bytearray, dict]], what: str, partial: bool) -> Stream:
        if not pieces:
            raise FilesystemError(f"{what} has no unnamed $DATA attribute")
        if not pieces[0][1]["non_resident"]:
            if len(pieces) != 1:
                raise FilesystemError(f"{what}: a resident $DATA in {len(pieces)} pieces")
            value = pieces[0][1]["_value"]
            return Stream(len(value), len(value), resident=value)
        pieces = sorted(pieces, key=lambda p: p[1].get("lowest_vcn", -1))
        first = pieces[0][1]
        if first["flags"] & (C.ATTR_COMPRESSION_MASK | C.ATTR_IS_ENCRYPTED):
            raise FilesystemError(f"{what}: compressed or encrypted $DATA is not supported")
        st = Stream(first["data_size"], first["initialized_size"])
        sizes_ok = 0 <= st.initialized_size <= st.data_size <= first["allocated_size"]
        if first["lowest_vcn"] != 0 or not sizes_ok:
            raise FilesystemError(f"{what}: $DATA sizes are corrupt")
        vcn = 0
        for buf, a in pieces:
            if not a["non_resident"] or a["lowest_vcn"] != vcn:
                raise FilesystemError(f"{what}: $DATA extents do not follow each other at VCN {vcn}")
            for run in self._runs(buf, a, what):
                st.runs.append(run)
                vcn = run[0] + run[2]
        if not partial and vcn * self.cluster_size < st.data_size:
            raise FilesystemError(f"{what}: runs map {vcn} clusters, fewer than the {st.data_size} bytes")
        return st

    def _read_stream(self, st: Stream, offset: int, length: int, what: str) -> bytes:
        """``length`` bytes of a value from ``offset``; sparse runs and past initialized_size are zeros."""
        length = max(0, min(length, st.data_size - offset))
        if st.resident is not None:
            return st.resident[offset : offset + length]
        cs, out, pos, end = self.cluster_size, bytearray(length), offset, offset + length
        for vcn, lcn, count in st.runs:
            rs, re_ = vcn * cs, (vcn + count) * cs
            if re_ <= pos or rs >= end:
                continue
            if rs > pos:
                break  # a hole in the mapping
            n = min(re_, end) - pos
            if lcn >= 0 and pos < st.initialized_size:
                want = min(n, st.initialized_size - pos)
                data = _read_at(self._fh, lcn * cs + pos - rs, want)
                if len(data) != want:
                    raise FilesystemError(f"cannot read {what} at cluster {lcn}")
                out[pos - offset : pos - offset + want] = data
            pos += n
            if pos >= end:
                break
        if pos < end:
            raise FilesystemError(f"{what}: byte {pos} is not mapped by any run")
        return bytes(out)

    def _load_mft(self) -> None:
        """$MFT's run list: first from record 0's own $DATA, then through its $ATTRIBUTE_LIST."""
        self._mft = self._data(C.FILE_MFT, partial=True)
        self._mft = self._data(C.FILE_MFT)
        if self._mft.resident is not None or self._mft.data_size < (C.FILE_BOOT + 1) * self.record_size:
            raise FilesystemError("NTFS $MFT is resident or too small")

    # ----------------------------------------------------------------- bitmap

    def _scan(self) -> np.ndarray:
        cs, clusters = self.cluster_size, self.clusters
        st = self._data(C.FILE_BITMAP)
        nbytes = -(-clusters // 8)
        if st.data_size < nbytes:
            raise FilesystemError(f"NTFS $Bitmap has {st.data_size} bytes; {clusters} clusters need {nbytes}")
        pieces, used = [], 0
        for off in range(0, nbytes, CHUNK_BYTES):
            n = min(CHUNK_BYTES, nbytes - off)
            bits = unpack_bits(self._read_stream(st, off, n, "NTFS $Bitmap"), min(8 * n, clusters - 8 * off))
            used += int(np.count_nonzero(bits))
            pieces.append(from_bitmap(bits, cs, base=8 * off * cs))
        bitmap = merge(np.concatenate(pieces))
        # the bitmap must at least mark $Boot, $MFT's start and its own clusters: else it is junk
        need = [(0, 1), (self.boot["mft_lcn"], 1)] + [(lcn, n) for _, lcn, n in st.runs if lcn >= 0]
        ends = bitmap[:, 0] + bitmap[:, 1]
        for lcn, n in need:
            i = int(np.searchsorted(bitmap[:, 0], np.uint64(lcn * cs), side="right")) - 1
            if i < 0 or int(ends[i]) < (lcn + n) * cs:
                raise FilesystemError(f"NTFS $Bitmap does not mark cluster {lcn} used: it is corrupt")
        self.used_clusters = used
        bps, backup = self.sector_size, self.total_sectors * self.sector_size
        always = np.array(
            [[0, C.BOOT_AREA_SIZE], [backup, bps], [self._size - self._size % bps - bps, bps]], dtype=np.int64
        )
        always = always[(always[:, 0] >= 0)].astype(np.uint64)
        return clip(merge(np.concatenate([bitmap, always])), 0, self._size)

    # ----------------------------------------------------------------- protocol

    def used_extents(self) -> np.ndarray:
        if self._extents is None:
            self._extents = self._scan()
        return self._extents.copy()

    def volume(self) -> tuple[str, int, str]:
        """(label, VOLUME_* flags, "major.minor") from $Volume."""
        what = f"NTFS MFT record {C.FILE_VOLUME} ($Volume)"
        buf, h = self._record(C.FILE_VOLUME)
        label, flags, version = "", 0, ""
        for a in self._attributes(buf, h, what):
            if a["type"] == C.AT_VOLUME_NAME and not a["non_resident"]:
                label = a["_value"].decode("utf-16-le", "replace").rstrip("\0")
            elif a["type"] == C.AT_VOLUME_INFORMATION and not a["non_resident"]:
                if len(a["_value"]) < C.VOLUME_INFORMATION_SIZE:
                    raise FilesystemError(f"{what}: $VOLUME_INFORMATION is too short")
                vi = C.VOLUME_INFORMATION.parse(a["_value"])
                flags, version = vi["flags"], f"{vi['major_ver']}.{vi['minor_ver']}"
        return label, flags, version

    def info(self) -> FsInfo:
        self.used_extents()  # counts the used clusters once; cached
        label, flags, _ = self.volume()
        note = "volume is marked dirty: run chkdsk/ntfsfix" if flags & C.VOLUME_IS_DIRTY else ""
        bps = self.sector_size
        return FsInfo(
            fstype="ntfs",
            size=min(self._size, (self.total_sectors + 1) * bps),
            used_bytes=self.used_clusters * self.cluster_size,
            block_size=self.cluster_size,
            label=label,
            uuid=f"{self.boot['volume_serial_number']:016X}",
            note=note,
        )
