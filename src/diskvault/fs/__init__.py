"""Filesystem readers: one module per filesystem behind the FsReader protocol (base.py).

    probe(fh) -> reader class  (by on-disk signature, never by partition type code)
    reader.info()         -> FsInfo (type, label, uuid, sizes)
    reader.used_extents() -> sorted merged (start, length) byte ranges that must be imaged

Every reader starts from "everything is used" in spirit: it may only leave out space the
filesystem's own allocation structures prove free.
"""
