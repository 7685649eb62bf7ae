"""Restore or clone onto a disk of another size, and write only what changed.

    layout.py    target layout: keep / fit / a layout file, 1 MiB aligned, the table kept otherwise
    fstools.py   minimum size, grow, shrink and check per filesystem (resize2fs, ntfsresize, ...)
    fat.py       FAT12/16/32 grow and shrink (no usable tool works on files)
    sources.py   what is copied from: an image chain or a disk (used-block maps), cell by cell
    delta.py     Rapid Delta: hash the target's cells, write only those that differ
    transfer.py  the run: stage shrinks, copy, TRIM free space, write the table, grow, check
"""
