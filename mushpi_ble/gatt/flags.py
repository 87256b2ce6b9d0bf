"""The flag strings bluetoothd accepts (one unknown flag fails the whole app)."""

from __future__ import annotations

CHARACTERISTIC_FLAGS = frozenset(
    {
        "broadcast",
        "read",
        "write-without-response",
        "write",
        "notify",
        "indicate",
        "authenticated-signed-writes",
        "extended-properties",
        "reliable-write",
        "writable-auxiliaries",
        "encrypt-read",
        "encrypt-write",
        "encrypt-notify",
        "encrypt-indicate",
        "encrypt-authenticated-read",
        "encrypt-authenticated-write",
        "encrypt-authenticated-notify",
        "encrypt-authenticated-indicate",
        "secure-read",
        "secure-write",
        "secure-notify",
        "secure-indicate",
        "authorize",
    }
)

READ_FLAGS = frozenset(
    {"read", "encrypt-read", "encrypt-authenticated-read", "secure-read"}
)
WRITE_FLAGS = frozenset(
    {
        "write",
        "write-without-response",
        "authenticated-signed-writes",
        "reliable-write",
        "encrypt-write",
        "encrypt-authenticated-write",
        "secure-write",
    }
)
NOTIFY_FLAGS = frozenset(
    {"notify", "indicate", "encrypt-notify", "encrypt-indicate", "encrypt-authenticated-notify",
     "encrypt-authenticated-indicate", "secure-notify", "secure-indicate"}
)
EXTENDED_FLAGS = frozenset({"reliable-write", "writable-auxiliaries"})
"""Flags for which bluetoothd adds a Characteristic Extended Properties descriptor."""
