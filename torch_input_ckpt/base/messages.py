"""Values named in messages: short enough that a hostile file or argument cannot flood an error."""

from __future__ import annotations

from typing import Any

__all__ = ["short"]

MAX_CHARS = 80


def short(value: Any) -> str:
    """``repr(value)`` (``str()`` of an exception) cut to 80 characters; an integer too long to print is
    named by its size."""
    # A damaged file may hold a 5,000-digit integer: name it without printing it (or converting it,
    # which Python refuses past 4,300 digits). One that fits (up to 77 digits) is printed whole, never cut.
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** (MAX_CHARS - 3):
        return f"<an integer of about {value.bit_length() * 30103 // 100000} digits>"
    text = str(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= MAX_CHARS else f"{text[: MAX_CHARS - 3]}..."
