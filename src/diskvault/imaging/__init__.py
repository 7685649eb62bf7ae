"""Imaging jobs: plan what to store (plan.py), run the read -> hash/compress -> write pipeline
(pipeline.py, create.py), check (verify.py) and write back (restore.py).

    create:  source -> partition table -> per-partition used extents (fs readers)
             -> cells of chunk_size touched by used bytes -> workers read+hash+compress
             -> writer appends in disk order -> index, extents, metadata, footer -> rename
    restore: image chunks in disk order -> workers check+decompress -> target writes
"""
