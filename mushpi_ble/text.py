"""Text a phone chose, made safe to print: a leaf module (imports nothing of mushpi_ble).

A phone names itself; the name reaches a terminal (``mushpi-ble bonds``, the live
view) and the journal. Control characters in it (terminal escapes, a bell, bidi
overrides) are shown as escapes instead of acting on the grower's terminal. The
command line imports this without the event loop, so it lives on its own.
"""

from __future__ import annotations


def printable(text: str, limit: int = 64) -> str:
    """``text`` with every character that is not printable shown as ``\\xNN`` /
    ``\\uNNNN`` / ``\\UNNNNNNNN``, at most ``limit`` characters of it kept."""
    out = []
    for ch in text[:limit]:
        if ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)
