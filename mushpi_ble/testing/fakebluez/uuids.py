"""Bluetooth UUID strings parsed the way BlueZ's ``bt_string_to_uuid`` does.

bluetoothd accepts 16-bit ("180d", "0x180D"), 32-bit ("0000180d") and
128-bit forms; the form matters for advertising, where a UUID costs 2, 4
or 16 bytes as written, even if it lies on the Bluetooth base UUID.
"""

from __future__ import annotations

import attrs

BASE_UUID = 0x0000_0000_0000_1000_8000_0080_5F9B_34FB
_HEX = "0123456789abcdef"
_SPACE = " \t\n\v\f\r"


def strtol(text: str, base: int) -> tuple[int, int]:
    """C ``strtol``: the value and the index where parsing stopped.

    With no digits at all the stop index is 0, as C's ``endptr == nptr``.
    ``base`` 0 picks 16 for "0x", 8 for a leading "0", else 10.
    """
    i, n = 0, len(text)
    while i < n and text[i] in _SPACE:
        i += 1
    sign = 1
    if i < n and text[i] in "+-":
        sign = -1 if text[i] == "-" else 1
        i += 1
    after_prefix = text[i + 2 : i + 3].lower()
    has_prefix = text[i : i + 2].lower() == "0x" and after_prefix != "" and after_prefix in _HEX
    if base in (0, 16) and has_prefix:
        base = 16
        i += 2
    elif base == 0:
        base = 8 if text[i : i + 1] == "0" else 10
    digits = _HEX[:base]
    start = i
    while i < n and text[i].lower() in digits:
        i += 1
    if i == start:
        return 0, 0
    return sign * int(text[start:i], base), i


@attrs.frozen
class BtUuid:
    """A parsed UUID: its 128-bit value and how many bytes its written form takes."""

    value: int
    size: int

    @property
    def canonical(self) -> str:
        """Lower-case 128-bit form, the key used to compare UUIDs."""
        h = f"{self.value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    @property
    def short(self) -> int | None:
        """The 16-bit value when this UUID lies on the base UUID below 0x10000."""
        if self.value & ((1 << 96) - 1) == BASE_UUID and self.value >> 96 < 0x10000:
            return self.value >> 96
        return None


def _from_short(value: int, size: int) -> BtUuid:
    return BtUuid((value << 96) | BASE_UUID, size)


def _whole(text: str, base: int) -> int | None:
    value, end = strtol(text, base)
    if end != len(text):
        return None
    return value


def parse_uuid(text: str) -> BtUuid | None:
    """Parse like ``bt_string_to_uuid``; None where bluetoothd would fail."""
    if len(text) == 36 and all(text[i] == "-" for i in (8, 13, 18, 23)):
        groups = (text[0:8], text[9:13], text[14:18], text[19:23], text[24:36])
        if not all(g and all(c in _HEX for c in g.lower()) for g in groups):
            return None
        return BtUuid(int("".join(groups), 16), 16)
    if len(text) in (8, 10):
        value = _whole(text, 16)
        return None if value is None else _from_short(value & 0xFFFF_FFFF, 4)
    if len(text) in (4, 6):
        value = _whole(text, 16)
        return None if value is None else _from_short(value & 0xFFFF, 2)
    return None


def normalize_uuid(text: str) -> str:
    """Canonical 128-bit string for any accepted form; ValueError otherwise."""
    parsed = parse_uuid(text)
    if parsed is None:
        raise ValueError(f"not a Bluetooth UUID: {text!r}")
    return parsed.canonical


GAP_SERVICE = _from_short(0x1800, 2).canonical
GATT_SERVICE = _from_short(0x1801, 2).canonical
