"""Probe order of the filesystem readers. Add a reader here to make it known.

Every probe checks an on-disk signature (never the partition type code) and validates it."""

from diskvault.fs.btrfs import BtrfsReader
from diskvault.fs.encrypted import EncryptedVolumeReader
from diskvault.fs.exfat import ExfatReader
from diskvault.fs.ext import ExtReader
from diskvault.fs.fat import FatReader
from diskvault.fs.ntfs import NtfsReader
from diskvault.fs.swap import SwapReader
from diskvault.fs.xfs import XfsReader

READERS = [ExtReader, NtfsReader, XfsReader, BtrfsReader, SwapReader, EncryptedVolumeReader, ExfatReader,
           FatReader]  # FAT last: its probe is a heuristic
