"""One exception root; each subclass also inherits the matching built-in."""

from __future__ import annotations


class HekeError(Exception):
    """Root of every error heke raises on purpose (user errors print as one line)."""


class CheckpointError(HekeError, ValueError):
    """A weights file is missing, damaged, untrusted or of the wrong model."""


class VideoDecodeError(HekeError, ValueError):
    """A video cannot be opened or decoded."""


class UnknownModelError(HekeError, KeyError, ValueError):
    """A model name with no entry in :mod:`heke_runtime.models` (a lookup, and a bad value)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def reason_of(exc: object) -> str:
    """An exception's reason on one line: an OS error's text, else its first line, else its
    type's name (what FFmpeg, sockets and file errors say, without the path they repeat)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
