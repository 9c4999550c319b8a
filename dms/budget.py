"""Byte budgets: parse "40GiB"-style sizes from flags and config, and print them back."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from agentrt.errors import ConfigError

# Unit suffix (lower-cased) -> bytes. Bare/binary letters are powers of 2, "xB" powers of 10.
_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_FORMS = (
    'a byte count (int or "1073741824"), or a number with a unit: "2GiB", "512 MiB", '
    '"40G" (K/M/G/T and KiB/MiB/GiB/TiB = powers of 1024; KB/MB/GB/TB = powers of 1000)'
)


def parse_bytes(value: str | int) -> int:
    """Parse a byte size ("2GiB", "512 MiB", "1.5GB", "40G", 1024) into an int number of bytes."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"invalid byte size {value!r}: expected {_FORMS}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"invalid byte size {value!r}: must be >= 0", hint=f"use {_FORMS}")
        return value
    match = _PATTERN.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ConfigError(f"invalid byte size {value!r}", hint=f"use {_FORMS}")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:  # pragma: no cover - the regex only admits decimals
        raise ConfigError(f"invalid byte size {value!r}", hint=f"use {_FORMS}") from exc
    return int(number * _UNITS[unit])


def format_bytes(n: int, digits: int = 2) -> str:
    """Format a byte count with binary units: 512 -> "512 B", 1610612736 -> "1.50 GiB".

    `digits` decimals below TiB-scale units (the CLI prints one).
    """
    sign = "-" if n < 0 else ""
    size = abs(n)
    if size < 1024:
        return f"{sign}{size} B"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{sign}{size / scale:.{digits}f} {unit}"
    raise AssertionError(f"unreachable: n={n}")  # pragma: no cover


__all__ = ["format_bytes", "parse_bytes"]
