"""A small system root for the setup and check tests: the account databases with a
bluetooth group, as a fresh Debian or Pi OS has them."""

from __future__ import annotations

from pathlib import Path

BASE = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
    "etc/group": "root:x:0:\nbluetooth:x:112:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/gshadow": "root:*::\nbluetooth:!::\n",
}


def make_root(top: Path) -> Path:
    """``top`` with :data:`BASE` written into it."""
    for name, text in BASE.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_text(text)
    return top
