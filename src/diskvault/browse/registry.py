"""Probe order of the file tree readers. Add a tree here to make it browsable.

Every probe checks an on-disk signature (never the partition type code); FAT goes last because its
probe is a heuristic."""

from diskvault.browse.exfat import ExfatTree
from diskvault.browse.ext import ExtTree
from diskvault.browse.fat import FatTree
from diskvault.browse.ntfs import NtfsTree

TREES = [ExtTree, NtfsTree, ExfatTree, FatTree]
