"""Probe order of the file tree readers. Add a tree here to make it browsable.

Every probe checks an on-disk signature (never the partition type code)."""

from diskvault.browse.ext import ExtTree

TREES = [ExtTree]
