"""Browse files inside images without mounting: one FileTree per filesystem (base.py) read through
a ChainWindow, so ls/cat/extract/search work where FUSE and loop devices do not."""
