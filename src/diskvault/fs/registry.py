"""Probe order of the filesystem readers. Add a reader here to make it known.

Every probe checks an on-disk signature (never the partition type code) and validates it, so the
order only matters for speed."""

from diskvault.fs.btrfs import BtrfsReader
from diskvault.fs.ext import ExtReader

READERS = [ExtReader, BtrfsReader]
