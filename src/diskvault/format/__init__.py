"""The diskvault image container (docs/FORMAT.md).

    file  := header(4096) chunk* section* footer(256)
    read  := footer -> sections (index, extents, metadata) -> chunk by disk offset

The image stores a sparse copy of a whole disk's address space cut on a fixed grid of
``chunk_size`` cells; a cell that is absent reads as zeros.
"""
