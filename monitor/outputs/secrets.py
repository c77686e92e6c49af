"""Secrets (tokens, HMAC keys) from a file or an environment variable: never the command line."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret's value; repr and str never show it (a log line or a traceback cannot leak it)."""
    value: str
    origin: str  # "file /path" or "env NAME": what an error message may say

    def __repr__(self) -> str:
        return f"Secret({self.origin})"

    __str__ = __repr__


def read_secret(file: str | None = None, env: str | None = None) -> Secret:
    """ValueError (a sentence without the value) when the secret is missing or empty."""
    if file is not None:
        try:
            with open(file, encoding="utf-8") as handle:
                value = handle.read().strip()
        except OSError as exc:
            raise ValueError(f"secret file {file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ValueError(f"secret file {file}: not UTF-8 text") from None
        origin = f"file {file}"
    elif env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ValueError(f"secret environment variable {env} is not set")
        origin = f"env {env}"
    else:
        raise ValueError("a secret needs `file:` or `env:`")
    if not value:
        raise ValueError(f"secret {origin} is empty")
    return Secret(value, origin)
