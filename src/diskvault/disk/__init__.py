"""Disks: opening sources and targets (source.py), partition tables (table.py, gpt.py, mbr.py),
and this machine's devices with their safety checks (devices.py)."""
