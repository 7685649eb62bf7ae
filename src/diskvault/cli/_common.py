"""What every command shares: one-line errors with exit codes, JSON output, confirmation."""

from __future__ import annotations

import errno
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import typer

from diskvault.errors import EXIT_FAILURE, DiskvaultError

EXIT_STATUS_HELP = "\n\nEXIT STATUS: 0 success, 1 failure, 2 bad usage or input, 130 interrupted."


def fail(message: str, code: int) -> None:
    print(f"diskvault: {message}", file=sys.stderr)
    raise typer.Exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DiskvaultError as e:
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                fail(f"destination is full: {e.filename or ''}".rstrip(": "), EXIT_FAILURE)
            where = f" ({e.filename})" if e.filename else ""
            fail(f"{e.strerror or e}{where}", EXIT_FAILURE)

    return wrapper


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def parse_partitions(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise typer.BadParameter(f"expected partition numbers like 1,3 (got {text!r})") from None


def tty_confirm(yes: bool) -> Callable[[str], bool] | None:
    """None (no question) with --yes; a prompt on a TTY; refusal without a TTY and without --yes."""
    if yes:
        return None
    if sys.stdin.isatty():
        return lambda question: typer.confirm(question, default=False)

    def refuse(question: str) -> bool:
        print(f"diskvault: {question} — no terminal to confirm on; pass --yes", file=sys.stderr)
        return False

    return refuse


def password_options(password_file: str | None, password_env: str | None, confirm: bool = False):
    """The password source for --password-file / --password-env, or a prompt when asked for."""
    from diskvault.crypto.keys import password_source

    return password_source(password_file, password_env, confirm)


PASSWORD_FILE = typer.Option(None, "--password-file", help="Read the password from the first line of this file.")
PASSWORD_ENV = typer.Option(None, "--password-env", help="Read the password from this environment variable.")
