"""Error tree: each error's docstring is its message template and each class has its exit code.

The CLI prints ``str(error)`` on one line and exits with ``exit_code``; nothing else of an
expected failure reaches the user (no tracebacks).
"""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class DiskvaultError(Exception):
    """{}"""

    exit_code = EXIT_FAILURE

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.args = args

    def __str__(self) -> str:
        template = type(self).__doc__ or "{}"
        template = template.strip().splitlines()[0]
        try:
            return template.format(*self.args)
        except (IndexError, KeyError):
            return " ".join(str(a) for a in self.args)


class UsageError(DiskvaultError):
    """{}"""

    exit_code = EXIT_USAGE


class SourceError(DiskvaultError, OSError):
    """cannot read source {}: {}"""

    exit_code = EXIT_USAGE


class ImageFormatError(DiskvaultError):
    """{}: not a diskvault image ({})"""

    exit_code = EXIT_USAGE


class IncompleteImageError(DiskvaultError):
    """{}: image is incomplete (no valid footer): it was truncated or is still being written"""

    exit_code = EXIT_FAILURE


class IntegrityError(DiskvaultError):
    """{}"""

    exit_code = EXIT_FAILURE


class WrongPasswordError(DiskvaultError):
    """wrong password for {}"""

    exit_code = EXIT_USAGE


class MissingChainMemberError(DiskvaultError):
    """{}"""

    exit_code = EXIT_FAILURE


class TargetError(DiskvaultError):
    """refusing target {}: {}"""

    exit_code = EXIT_FAILURE


class PartitionTableError(DiskvaultError):
    """{}"""


class FilesystemError(DiskvaultError):
    """{}"""


class Aborted(DiskvaultError):
    """aborted: {}"""
