"""Probe order of the filesystem readers. Add a reader here to make it known."""

from diskvault.fs.ext import ExtReader

READERS = [ExtReader]
