"""Errors of file archives (the message template is each class's docstring, as in diskvault.errors)."""

from diskvault.errors import EXIT_USAGE, DiskvaultError


class ArchiveFormatError(DiskvaultError):
    """{}: not a diskvault file archive ({})"""

    exit_code = EXIT_USAGE


class UnsafeArchiveError(DiskvaultError):
    """refusing to restore {}: {}"""

    exit_code = EXIT_USAGE


class UnsafePathError(DiskvaultError):
    """{}: {}"""
