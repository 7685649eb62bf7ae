"""Field tables, the way every ``c_<fs>.py`` declares its on-disk structures: one row per field,
(offset, name as in the spec, struct format), turned into one ``struct.Struct`` here."""

from __future__ import annotations

import struct
from typing import NamedTuple


class Field(NamedTuple):
    offset: int
    name: str
    fmt: str  # struct format of the field, without byte order


class Layout:
    """A field table as one ``struct.Struct`` in offset order, the gaps padded (overlapping fields
    are refused): ``size`` bytes, ``parse(buf, offset)`` -> dict of field values."""

    def __init__(self, fields: tuple[Field, ...], byte_order: str = "<") -> None:
        fmt, pos = byte_order, 0
        ordered = sorted(fields, key=lambda f: f.offset)
        for f in ordered:
            if f.offset < pos:
                raise ValueError(f"overlapping field {f.name}")
            if f.offset > pos:
                fmt += f"{f.offset - pos}x"
            fmt += f.fmt
            pos = f.offset + struct.calcsize(byte_order + f.fmt)
        self.struct = struct.Struct(fmt)
        self.names = tuple(f.name for f in ordered)
        self.size = self.struct.size

    def parse(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> dict:
        return dict(zip(self.names, self.struct.unpack_from(buf, offset)))
