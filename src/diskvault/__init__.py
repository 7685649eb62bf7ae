"""diskvault: disk imaging, cloning and backup for Linux."""

__version__ = "0.1.0"
