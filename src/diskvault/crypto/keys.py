"""Password -> set key. Argon2id with a random salt; the parameters live in the image header so
every image of a set (same salt and parameters) opens with the set's password.

    master      = Argon2id(password, salt, t, m, p) (32 bytes)
    chunk_key   = BLAKE3-derive("diskvault 2026-11 chunk encryption", master)   AES-256-GCM key
    hash_key    = BLAKE3-derive("diskvault 2026-11 content hash", master)       keyed content hashes
    key_check   = BLAKE3-derive("diskvault 2026-11 key check", master)          stored in the header
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import blake3

from diskvault.errors import UsageError, WrongPasswordError

# Interactive default: ~0.3 s and 64 MiB here. Tests lower it with DISKVAULT_KDF_MEMORY_KIB.
DEFAULT_TIME = 3
DEFAULT_MEMORY_KIB = 64 * 1024
DEFAULT_PARALLELISM = 2


@dataclass(frozen=True)
class KdfParams:
    salt: bytes
    time_cost: int
    memory_kib: int
    parallelism: int

    @classmethod
    def new(cls) -> "KdfParams":
        memory = int(os.environ.get("DISKVAULT_KDF_MEMORY_KIB", DEFAULT_MEMORY_KIB))
        return cls(os.urandom(32), DEFAULT_TIME, memory, DEFAULT_PARALLELISM)


@dataclass(frozen=True)
class SetKey:
    chunk_key: bytes
    hash_key: bytes
    key_check: bytes
    kdf: KdfParams


def _derive(context: str, master: bytes) -> bytes:
    return blake3.blake3(master, derive_key_context=context).digest(32)


def derive(password: str, kdf: KdfParams) -> SetKey:
    if not (1 <= kdf.time_cost <= 100 and 8 <= kdf.memory_kib <= 16 * 1024 * 1024 and 1 <= kdf.parallelism <= 64):
        raise ValueError("key-derivation parameters out of range")
    from argon2.low_level import Type, hash_secret_raw  # here: most images are not encrypted
    master = hash_secret_raw(password.encode(), kdf.salt, time_cost=kdf.time_cost, memory_cost=kdf.memory_kib,
                             parallelism=kdf.parallelism, hash_len=32, type=Type.ID)
    return SetKey(_derive("diskvault 2026-11 chunk encryption", master),
                  _derive("diskvault 2026-11 content hash", master),
                  _derive("diskvault 2026-11 key check", master), kdf)


def unlock(password: str, kdf: KdfParams, key_check: bytes, path: str) -> SetKey:
    """The set key, or WrongPasswordError when the password does not match the header's check."""
    key = derive(password, kdf)
    import hmac  # here: it loads OpenSSL, which plain images never need
    if not hmac.compare_digest(key.key_check, key_check):
        raise WrongPasswordError(path)
    return key


PasswordSource = Callable[[], str]


def password_source(password_file: str | None = None, password_env: str | None = None,
                    confirm: bool = False) -> PasswordSource:
    """Where the password comes from: a file (first line), an environment variable, or a prompt."""

    def get() -> str:
        if password_file:
            try:
                with open(password_file, encoding="utf-8") as f:
                    pw = f.read().splitlines()[0] if os.path.getsize(password_file) else ""
            except OSError as e:
                raise UsageError(f"cannot read password file {password_file}: {e.strerror}") from None
        elif password_env:
            if password_env not in os.environ:
                raise UsageError(f"environment variable {password_env} is not set")
            pw = os.environ[password_env]
        elif sys.stdin.isatty():
            import getpass
            pw = getpass.getpass("Password: ")
            if confirm and getpass.getpass("Repeat password: ") != pw:
                raise UsageError("passwords do not match")
        else:
            raise UsageError("the image is encrypted: give --password-file or --password-env")
        if not pw:
            raise UsageError("empty password")
        return pw

    return get
