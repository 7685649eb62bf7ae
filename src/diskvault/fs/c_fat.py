"""On-disk structures of FAT12/16/32 and exFAT, little-endian.

Field names follow Microsoft's "FAT: General Overview of On-Disk Format" (BPB_*/BS_*/DIR_*/FSI_*)
and the "exFAT file system specification" (boot sector and directory entry fields). Only
declarations live here; the logic is in ``diskvault.fs.fat`` and ``diskvault.fs.exfat``.
Each field is ``(offset, name, format)`` with a ``struct`` format character (``8s`` = bytes).
"""

from __future__ import annotations

from diskvault.fs.cstruct import Field, Layout


BOOT_SIGNATURE = 0xAA55  # Signature_word at byte 510 of the boot sector (bytes 0x55 0xAA)
BOOT_SIGNATURE_OFFSET = 510
SECTOR_MIN, SECTOR_MAX = 512, 4096  # legal BPB_BytsPerSec values are 512, 1024, 2048, 4096

# ------------------------------------------------------------------------------ FAT boot sector

# The BPB shared by FAT12, FAT16 and FAT32 (offsets 0x00..0x23)
BPB_FIELDS: tuple[Field, ...] = (
    Field(0x00, "BS_jmpBoot", "3s"),  # EB xx 90 or E9 xx xx
    Field(0x03, "BS_OEMName", "8s"),  # formatting system's name ("MSWIN4.1", "mkfs.fat")
    Field(0x0B, "BPB_BytsPerSec", "H"),  # bytes per sector: 512, 1024, 2048 or 4096
    Field(0x0D, "BPB_SecPerClus", "B"),  # sectors per cluster: a power of 2, 1..128
    Field(0x0E, "BPB_RsvdSecCnt", "H"),  # reserved sectors before the first FAT (boot sector incl.)
    Field(0x10, "BPB_NumFATs", "B"),  # copies of the FAT (usually 2)
    Field(0x11, "BPB_RootEntCnt", "H"),  # 32-byte entries in the fixed root dir (0 on FAT32)
    Field(0x13, "BPB_TotSec16", "H"),  # total sectors when < 65536, else 0
    Field(0x15, "BPB_Media", "B"),  # media descriptor: 0xF0 or 0xF8..0xFF
    Field(0x16, "BPB_FATSz16", "H"),  # sectors per FAT on FAT12/16; 0 on FAT32
    Field(0x18, "BPB_SecPerTrk", "H"),  # CHS geometry (ignored)
    Field(0x1A, "BPB_NumHeads", "H"),  # CHS geometry (ignored)
    Field(0x1C, "BPB_HiddSec", "I"),  # sectors before this partition (ignored)
    Field(0x20, "BPB_TotSec32", "I"),  # total sectors when BPB_TotSec16 is 0
)

# FAT12/FAT16 extended BPB (offsets 0x24..0x3D)
BPB16_FIELDS: tuple[Field, ...] = (
    Field(0x24, "BS_DrvNum", "B"),  # BIOS drive number
    Field(0x25, "BS_Reserved1", "B"),  # Linux keeps its "dirty" state bit 0 here
    Field(0x26, "BS_BootSig", "B"),  # 0x29 (or 0x28): the next three fields are present
    Field(0x27, "BS_VolID", "I"),  # volume serial number
    Field(0x2B, "BS_VolLab", "11s"),  # volume label, space padded ("NO NAME    " when none)
    Field(0x36, "BS_FilSysType", "8s"),  # "FAT12   " etc. - informational only, never trusted
)

# FAT32 extended BPB (offsets 0x24..0x59)
BPB32_FIELDS: tuple[Field, ...] = (
    Field(0x24, "BPB_FATSz32", "I"),  # sectors per FAT
    Field(0x28, "BPB_ExtFlags", "H"),  # bits 0-3 active FAT, bit 7 set = only that FAT is used
    Field(0x2A, "BPB_FSVer", "H"),  # version, must be 0:0
    Field(0x2C, "BPB_RootClus", "I"),  # first cluster of the root directory
    Field(0x30, "BPB_FSInfo", "H"),  # sector of the FSInfo structure (in the reserved area)
    Field(0x32, "BPB_BkBootSec", "H"),  # sector of the backup boot sector (0 = none)
    Field(0x34, "BPB_Reserved", "12s"),  # zero
    Field(0x40, "BS_DrvNum", "B"),  # BIOS drive number
    Field(0x41, "BS_Reserved1", "B"),  # Linux keeps its "dirty" state bit 0 here
    Field(0x42, "BS_BootSig", "B"),  # 0x29 (or 0x28): the next three fields are present
    Field(0x43, "BS_VolID", "I"),  # volume serial number
    Field(0x47, "BS_VolLab", "11s"),  # volume label, space padded
    Field(0x52, "BS_FilSysType", "8s"),  # "FAT32   " - informational only, never trusted
)

FAT12_MAX_CLUSTERS = 4084  # a volume with fewer than 4085 clusters is FAT12 ...
FAT16_MAX_CLUSTERS = 65524  # ... fewer than 65525 FAT16, anything else FAT32
FAT32_MAX_CLUSTERS = 0x0FFFFFF5  # cluster numbers 2..0x0FFFFFF6 exist at most
FAT32_ENTRY_MASK = 0x0FFFFFFF  # the high 4 bits of a FAT32 entry are reserved
FAT16_CLN_SHUT = 0x8000  # FAT[1] bit: 1 = volume was unmounted cleanly
FAT32_CLN_SHUT = 0x08000000
FAT16_HRD_ERR = 0x4000  # FAT[1] bit: 0 = a disk I/O error was seen
FAT32_HRD_ERR = 0x04000000
EXTFLAGS_ACTIVE_MASK = 0x000F  # BPB_ExtFlags: number of the active FAT ...
EXTFLAGS_NO_MIRROR = 0x0080  # ... used when this bit says the FATs are not mirrored
LINUX_STATE_DIRTY = 0x01  # BS_Reserved1 bit set by Linux while mounted
NO_NAME = b"NO NAME    "  # BS_VolLab of a volume without a label
BOOT_SIGS = (0x28, 0x29)  # BS_BootSig: 0x28 = BS_VolID present, 0x29 = BS_VolID and BS_VolLab
NOT_FAT_OEM = (b"NTFS    ", b"EXFAT   ", b"-FVE-FS-")  # NTFS, exFAT, BitLocker: FAT-like boot sectors
NOT_FAT_FSTYPE = (b"JFS     ", b"HPFS    ")  # OS/2 pseudo-BPBs at the FAT16 BS_FilSysType offset

# 32-byte short directory entry (DIR_*); 0x0F-attribute entries are long-name (LFN) pieces
DIR_ENTRY_SIZE = 32
DIRENT_FIELDS: tuple[Field, ...] = (
    Field(0x00, "DIR_Name", "11s"),  # 8.3 name; [0]=0x00 end of dir, 0xE5 deleted, 0x05 = 0xE5
    Field(0x0B, "DIR_Attr", "B"),  # ATTR_* bits
    Field(0x14, "DIR_FstClusHI", "H"),  # first cluster, high 16 bits (FAT32)
    Field(0x1A, "DIR_FstClusLO", "H"),  # first cluster, low 16 bits
    Field(0x1C, "DIR_FileSize", "I"),  # size in bytes
)
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_LONG_NAME = 0x0F  # READ_ONLY | HIDDEN | SYSTEM | VOLUME_ID
ATTR_LONG_NAME_MASK = 0x3F
DIR_END = 0x00
DIR_FREE = 0xE5

# ------------------------------------------------------------------------------ exFAT

EXFAT_NAME = b"EXFAT   "  # FileSystemName at offset 3
EXFAT_NAME_OFFSET = 3
EXFAT_JUMP = b"\xeb\x76\x90"
EXFAT_BOOT_REGION_SECTORS = 12  # boot sector, 8 extended boot sectors, OEM params, reserved, checksum
EXFAT_CHECKSUM_SECTOR = 11  # the boot checksum sector (the checksum repeated as 32-bit words)
EXFAT_CHECKSUM_SKIP = (106, 107, 112)  # VolumeFlags and PercentInUse are not checksummed

# Main (and backup) boot sector
EXFAT_BOOT_FIELDS: tuple[Field, ...] = (
    Field(0, "JumpBoot", "3s"),  # EB 76 90
    Field(3, "FileSystemName", "8s"),  # "EXFAT   "
    Field(11, "MustBeZero", "53s"),  # zeros (where a FAT BPB would be)
    Field(64, "PartitionOffset", "Q"),  # sectors before the volume (0 = ignore)
    Field(72, "VolumeLength", "Q"),  # size of the volume in sectors
    Field(80, "FatOffset", "I"),  # first sector of the first FAT
    Field(84, "FatLength", "I"),  # sectors per FAT
    Field(88, "ClusterHeapOffset", "I"),  # first sector of the cluster heap (cluster 2)
    Field(92, "ClusterCount", "I"),  # clusters in the heap
    Field(96, "FirstClusterOfRootDirectory", "I"),  # root directory's first cluster
    Field(100, "VolumeSerialNumber", "I"),  # serial number
    Field(104, "FileSystemRevision", "H"),  # major in the high byte: 1.00 = 0x0100
    Field(106, "VolumeFlags", "H"),  # VOLUME_FLAG_* bits
    Field(108, "BytesPerSectorShift", "B"),  # sector size = 1 << this (9..12)
    Field(109, "SectorsPerClusterShift", "B"),  # cluster size = sector size << this (<= 32 MiB)
    Field(110, "NumberOfFats", "B"),  # 1, or 2 with TexFAT
    Field(111, "DriveSelect", "B"),  # INT 13h drive number
    Field(112, "PercentInUse", "B"),  # allocated clusters in percent, 0xFF = unknown
    Field(510, "BootSignature", "H"),  # 0xAA55
)
VOLUME_FLAG_ACTIVE_FAT = 0x0001  # which FAT and allocation bitmap are active (TexFAT)
VOLUME_FLAG_DIRTY = 0x0002  # the volume is mounted or was not cleanly unmounted
VOLUME_FLAG_MEDIA_FAILURE = 0x0004  # read/write errors were seen
EXFAT_MIN_SECTOR_SHIFT, EXFAT_MAX_SECTOR_SHIFT = 9, 12
EXFAT_MAX_CLUSTER_SHIFT = 25  # BytesPerSectorShift + SectorsPerClusterShift <= 25 (32 MiB)
EXFAT_MAX_CLUSTERS = 0xFFFFFFF5
EXFAT_FAT_EOC = 0xFFFFFFFF  # end of a cluster chain
EXFAT_FAT_BAD = 0xFFFFFFF7  # bad cluster
EXFAT_FIRST_CLUSTER = 2
EXFAT_MAX_DIR_BYTES = 256 << 20  # a directory is at most 256 MiB

# Directory entries: 32 bytes; EntryType bit 7 = InUse (a cleared bit means deleted)
EXFAT_ENTRY_SIZE = 32
EXFAT_ENTRY_EOD = 0x00  # end of directory
EXFAT_ENTRY_BITMAP = 0x81  # Allocation Bitmap
EXFAT_ENTRY_UPCASE = 0x82  # Up-case Table
EXFAT_ENTRY_LABEL = 0x83  # Volume Label
EXFAT_ENTRY_FILE = 0x85  # File (followed by its secondary entries)
EXFAT_ENTRY_GUID = 0xA0  # Volume GUID
EXFAT_ENTRY_INUSE = 0x80

# Allocation Bitmap (0x81) and Up-case Table (0x82) entries share FirstCluster/DataLength offsets
EXFAT_BITMAP_FIELDS: tuple[Field, ...] = (
    Field(0, "EntryType", "B"),  # 0x81
    Field(1, "BitmapFlags", "B"),  # bit 0: 0 = bitmap of the first FAT, 1 = of the second
    Field(20, "FirstCluster", "I"),  # first cluster of the bitmap (contiguous)
    Field(24, "DataLength", "Q"),  # bytes: at least ceil(ClusterCount / 8)
)
EXFAT_UPCASE_FIELDS: tuple[Field, ...] = (
    Field(0, "EntryType", "B"),  # 0x82
    Field(4, "TableChecksum", "I"),  # checksum of the table
    Field(20, "FirstCluster", "I"),  # first cluster of the table (contiguous)
    Field(24, "DataLength", "Q"),  # bytes
)
EXFAT_LABEL_FIELDS: tuple[Field, ...] = (
    Field(0, "EntryType", "B"),  # 0x83
    Field(1, "CharacterCount", "B"),  # UTF-16 characters in VolumeLabel (at most 11)
    Field(2, "VolumeLabel", "22s"),  # UTF-16LE
)
EXFAT_LABEL_MAX_CHARS = 11


BPB = Layout(BPB_FIELDS)
BPB16 = Layout(BPB16_FIELDS)
BPB32 = Layout(BPB32_FIELDS)
DIRENT = Layout(DIRENT_FIELDS)
EXFAT_BOOT = Layout(EXFAT_BOOT_FIELDS)
EXFAT_BITMAP = Layout(EXFAT_BITMAP_FIELDS)
EXFAT_UPCASE = Layout(EXFAT_UPCASE_FIELDS)
EXFAT_LABEL = Layout(EXFAT_LABEL_FIELDS)
