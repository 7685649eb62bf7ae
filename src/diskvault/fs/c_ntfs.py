"""On-disk structures of NTFS (names as in the Linux kernel's fs/ntfs/layout.h), little-endian.

Only declarations live here; the logic that interprets them is in ``diskvault.fs.ntfs``.
Each field is ``(offset, name, format)`` with a ``struct`` format character (``8s`` = bytes).
"""

from __future__ import annotations

from diskvault.fs.cstruct import Field, Layout


NTFS_OEM_ID = b"NTFS    "  # oem_id at byte 3 of the boot sector
BOOT_SECTOR_SIZE = 512  # the BPB fields all lie in the first 512 bytes, whatever the sector size
BOOT_AREA_SIZE = 8192  # $Boot: the boot sector and the boot loader code (16 sectors of 512)
NTFS_BLOCK_SIZE = 512  # the update sequence array protects the last 2 bytes of every 512 bytes
NTFS_MAX_CLUSTER_SIZE = 2 << 20  # 2 MiB, the largest cluster Windows formats


# NTFS_BOOT_SECTOR with its BIOS_PARAMETER_BLOCK flattened in (512 bytes)
BOOT_SECTOR_FIELDS: tuple[Field, ...] = (
    Field(0x00, "jump", "3s"),  # x86 jump to the boot code
    Field(0x03, "oem_id", "8s"),  # "NTFS    "
    Field(0x0B, "bytes_per_sector", "H"),  # 256..4096, a power of two
    Field(0x0D, "sectors_per_cluster", "B"),  # 1..128, or 0xF4.. meaning 2^(256 - value)
    Field(0x0E, "reserved_sectors", "H"),  # must be 0
    Field(0x10, "fats", "B"),  # must be 0
    Field(0x11, "root_entries", "H"),  # must be 0
    Field(0x13, "sectors", "H"),  # must be 0
    Field(0x15, "media_type", "B"),  # 0xF8 = hard disk
    Field(0x16, "sectors_per_fat", "H"),  # must be 0
    Field(0x18, "sectors_per_track", "H"),  # CHS geometry (boot code only)
    Field(0x1A, "heads", "H"),  # CHS geometry (boot code only)
    Field(0x1C, "hidden_sectors", "I"),  # partition start sector (boot code only)
    Field(0x20, "large_sectors", "I"),  # must be 0
    Field(0x24, "physical_drive", "B"),  # BIOS drive number, 0x80
    Field(0x25, "current_head", "B"),  # unused
    Field(0x26, "extended_boot_signature", "B"),  # 0x80
    Field(0x27, "reserved2", "B"),  # unused
    Field(0x28, "number_of_sectors", "q"),  # volume size in sectors, less the backup boot sector
    Field(0x30, "mft_lcn", "q"),  # first cluster of $MFT's data
    Field(0x38, "mftmirr_lcn", "q"),  # first cluster of $MFTMirr's data
    Field(0x40, "clusters_per_mft_record", "b"),  # > 0: clusters; < 0: 2^-value bytes
    Field(0x44, "clusters_per_index_record", "b"),  # > 0: clusters; < 0: 2^-value bytes
    Field(0x48, "volume_serial_number", "Q"),  # what blkid shows as the UUID (%016X)
    Field(0x50, "checksum", "I"),  # unused (0)
    Field(0x1FE, "end_of_sector_marker", "H"),  # 0xAA55
)

# BIOS parameter block fields FAT uses and NTFS must leave zero (blkid and the kernel check them)
BPB_ZERO_FIELDS = ("reserved_sectors", "fats", "root_entries", "sectors", "sectors_per_fat", "large_sectors")

# MFT_RECORD: the header of every FILE record (a record is 1 KiB or 4 KiB)
MFT_RECORD_FIELDS: tuple[Field, ...] = (
    Field(0x00, "magic", "4s"),  # "FILE" ("BAAD" after a failed multi-sector transfer)
    Field(0x04, "usa_ofs", "H"),  # offset of the update sequence array
    Field(0x06, "usa_count", "H"),  # 1 + the number of 512-byte blocks in the record
    Field(0x08, "lsn", "Q"),  # $LogFile sequence number of the last change
    Field(0x10, "sequence_number", "H"),  # reuse count of this record
    Field(0x12, "link_count", "H"),  # hard links (directory entries) to this record
    Field(0x14, "attrs_offset", "H"),  # offset of the first attribute (8-byte aligned)
    Field(0x16, "flags", "H"),  # MFT_RECORD_IN_USE / MFT_RECORD_IS_DIRECTORY
    Field(0x18, "bytes_in_use", "I"),  # bytes of the record holding data
    Field(0x1C, "bytes_allocated", "I"),  # the record size
    Field(0x20, "base_mft_record", "Q"),  # 0 for a base record, else its base's reference
    Field(0x28, "next_attr_instance", "H"),  # next attribute instance number
    Field(0x2A, "reserved", "H"),  # NTFS 3.1+: alignment
    Field(0x2C, "mft_record_number", "I"),  # NTFS 3.1+: this record's number (attrs_offset >= 0x30)
)
MFT_RECORD_V31_SIZE = 0x30  # header size when mft_record_number is present

# ATTR_RECORD: the common head, then either the resident or the non-resident part
ATTR_FIELDS: tuple[Field, ...] = (
    Field(0x00, "type", "I"),  # AT_* (0xFFFFFFFF ends the list)
    Field(0x04, "length", "I"),  # bytes of this attribute record (8-byte aligned)
    Field(0x08, "non_resident", "B"),  # 0 = value in the record, 1 = value in clusters
    Field(0x09, "name_length", "B"),  # name length in UTF-16 units (0 = unnamed)
    Field(0x0A, "name_offset", "H"),  # offset of the name
    Field(0x0C, "flags", "H"),  # ATTR_IS_COMPRESSED / ATTR_IS_ENCRYPTED / ATTR_IS_SPARSE
    Field(0x0E, "instance", "H"),  # unique within the base record
)
ATTR_HEADER_SIZE = 0x10
RESIDENT_FIELDS: tuple[Field, ...] = (
    Field(0x10, "value_length", "I"),  # bytes of the value
    Field(0x14, "value_offset", "H"),  # offset of the value (8-byte aligned)
    Field(0x16, "resident_flags", "B"),  # RESIDENT_ATTR_IS_INDEXED
)
RESIDENT_MIN_SIZE = 0x18
NON_RESIDENT_FIELDS: tuple[Field, ...] = (
    Field(0x10, "lowest_vcn", "q"),  # first cluster of the value this extent maps
    Field(0x18, "highest_vcn", "q"),  # last cluster it maps (-1 for an empty value)
    Field(0x20, "mapping_pairs_offset", "H"),  # offset of the run list
    Field(0x22, "compression_unit", "B"),  # log2 clusters per compression unit (0 = none)
    Field(0x28, "allocated_size", "q"),  # bytes allocated (only in the lowest_vcn 0 extent)
    Field(0x30, "data_size", "q"),  # bytes of the value
    Field(0x38, "initialized_size", "q"),  # bytes written; the rest reads as zeros
)
NON_RESIDENT_MIN_SIZE = 0x40

# ATTR_LIST_ENTRY: one entry of an $ATTRIBUTE_LIST value
ATTR_LIST_ENTRY_FIELDS: tuple[Field, ...] = (
    Field(0x00, "type", "I"),  # AT_* of the listed attribute
    Field(0x04, "length", "H"),  # bytes of this entry (8-byte aligned)
    Field(0x06, "name_length", "B"),  # name length in UTF-16 units
    Field(0x07, "name_offset", "B"),  # offset of the name
    Field(0x08, "lowest_vcn", "q"),  # first cluster mapped by that extent
    Field(0x10, "mft_reference", "Q"),  # record holding it (low 48 bits) + sequence (high 16)
    Field(0x18, "instance", "H"),  # its instance number in that record
)
ATTR_LIST_ENTRY_MIN_SIZE = 0x1A
ATTR_LIST_MAX_SIZE = 0x40000  # larger lists are corrupt (as libntfs-3g judges them)

# VOLUME_INFORMATION: the value of $Volume's $VOLUME_INFORMATION attribute
VOLUME_INFORMATION_FIELDS: tuple[Field, ...] = (
    Field(0x00, "reserved", "Q"),
    Field(0x08, "major_ver", "B"),  # 3 for NTFS 3.x (Windows 2000 and later)
    Field(0x09, "minor_ver", "B"),  # 0 or 1
    Field(0x0A, "flags", "H"),  # VOLUME_*
)
VOLUME_INFORMATION_SIZE = 0x0C

# system files (MFT record numbers)
FILE_MFT = 0  # $MFT
FILE_MFTMIRR = 1  # $MFTMirr
FILE_VOLUME = 3  # $Volume: the label and the volume flags
FILE_BITMAP = 6  # $Bitmap: one bit per cluster, set = in use
FILE_BOOT = 7  # $Boot

# MFT_RECORD.flags
MFT_RECORD_IN_USE = 0x0001
MFT_RECORD_IS_DIRECTORY = 0x0002
MREF_MASK = (1 << 48) - 1  # the record-number part of an MFT reference

# attribute types
AT_STANDARD_INFORMATION = 0x10
AT_ATTRIBUTE_LIST = 0x20
AT_FILE_NAME = 0x30
AT_VOLUME_NAME = 0x60
AT_VOLUME_INFORMATION = 0x70
AT_DATA = 0x80
AT_END = 0xFFFFFFFF

# ATTR_RECORD.flags
ATTR_IS_COMPRESSED = 0x0001
ATTR_COMPRESSION_MASK = 0x00FF
ATTR_IS_ENCRYPTED = 0x4000
ATTR_IS_SPARSE = 0x8000

# VOLUME_INFORMATION.flags
VOLUME_IS_DIRTY = 0x0001
VOLUME_RESIZE_LOG_FILE = 0x0002
VOLUME_UPGRADE_ON_MOUNT = 0x0004
VOLUME_MOUNTED_ON_NT4 = 0x0008
VOLUME_DELETE_USN_UNDERWAY = 0x0010
VOLUME_REPAIR_OBJECT_ID = 0x0020
VOLUME_MODIFIED_BY_CHKDSK = 0x8000


BOOT_SECTOR = Layout(BOOT_SECTOR_FIELDS)
MFT_RECORD = Layout(MFT_RECORD_FIELDS)
ATTR = Layout(ATTR_FIELDS)
RESIDENT = Layout(ATTR_FIELDS + RESIDENT_FIELDS)
NON_RESIDENT = Layout(ATTR_FIELDS + NON_RESIDENT_FIELDS)
ATTR_LIST_ENTRY = Layout(ATTR_LIST_ENTRY_FIELDS)
VOLUME_INFORMATION = Layout(VOLUME_INFORMATION_FIELDS)
