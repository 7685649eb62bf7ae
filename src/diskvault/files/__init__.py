"""File and folder backups (docs/FILES-FORMAT.md): archives ``SETID-II-SS.dvbak`` of chosen trees.

    backup:  walk (walker.py: filters, one-file-system, caches) -> per entry: unchanged since the
             parent catalog? reuse its record : read (reading.py: sparse map, torn-read retries)
             -> FastCDC chunks (chunker.py) -> hash, dedup against the set, zstd, seal
             -> writer.py appends chunks; catalog (catalog.py) + index + metadata + footer -> rename
    restore: reader.py opens the chain -> safepath.py validates names and opens parents without
             following symlinks -> chunks checked and written, holes kept -> owner, mode, xattrs, times
"""
