"""What ``mushpi-ble check`` says about the system around the peripheral: the settings
file it read (an inline comment there is already a configuration error), the pieces
``mushpi-ble setup`` installed (right for the service user), who runs the check, a root
whose writes vanish at reboot, and which cure fits this OS when bluetoothd refuses
advertisements. Each finding is a function of what it reads, so the tests hand it a
root, mounts or an os-release of their own."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import attrs

from mushpi_ble.config import Settings

from . import system_files as files

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"
FIXED_BLUEZ = (5, 87)


@attrs.frozen
class Finding:
    level: str
    topic: str
    message: str


# -- the settings file -----------------------------------------------------------------------
def default_env_file(root: Path = Path("/")) -> Path:
    """The service's settings file when setup installed one, else ./.env."""
    service = root / files.SETTINGS.relative_to("/")
    return files.SETTINGS if service.exists() else Path(".env")


def settings_finding(source: Path | None, tried: Path) -> Finding:
    if source is None:
        return Finding(INFO, "settings", f"no settings file ({tried} does not exist): "
                       "defaults and the environment only")
    return Finding(OK, "settings", f"read {source} (and the environment, which wins)")


# -- the pieces setup installed ----------------------------------------------------------------
def _db(root: Path, name: str) -> dict[str, list[str]]:
    path = root / "etc" / name
    if not path.exists():
        return {}
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()
            if line.count(":") >= 2}


def rfkill_writable(root: Path, user: str, device: Path = Path("/dev/rfkill")) -> bool | None:
    """Whether ``user`` may write the rfkill device (None: no device here)."""
    try:
        info = os.stat(root / device.relative_to("/"))
    except OSError:
        return None
    passwd, groups = _db(root, "passwd"), _db(root, "group")
    if user not in passwd:
        return False
    uid, gid = int(passwd[user][2]), int(passwd[user][3])
    gids = {gid} | {int(g[2]) for g in groups.values()
                    if len(g) > 3 and user in g[3].split(",")}
    mode = info.st_mode
    return bool((info.st_uid == uid and mode & stat.S_IWUSR)
                or (info.st_gid in gids and mode & stat.S_IWGRP) or mode & stat.S_IWOTH)


def setup_findings(root: Path = Path("/")) -> list[Finding]:
    """Every piece setup recorded, present and as it wrote it, right for its user."""
    manifest_path = root / files.MANIFEST.relative_to("/")
    if not manifest_path.exists():
        return [Finding(INFO, "setup", "mushpi-ble setup has not run here (sudo mushpi-ble "
                        "setup --user USER --unit CONTROLLER.service, or --standalone to try "
                        "BLE with a simulated controller)")]
    manifest = json.loads(manifest_path.read_text())
    user = manifest.get("user") or "mushpi"
    passwd, groups = _db(root, "passwd"), _db(root, "group")

    def member(group: str) -> bool:
        entry = groups.get(group) or []
        return len(entry) > 3 and user in entry[3].split(",")

    writable = rfkill_writable(root, user)
    policy = root / files.POLICY.relative_to("/")
    rows: list[tuple[str, bool | None, str, str]] = [
        (FAIL, user in passwd, f"user {user} exists", "run setup again"),
        (FAIL, member(files.BLUETOOTH_GROUP), f"{user} is in {files.BLUETOOTH_GROUP} "
         "(BlueZ's D-Bus policy)", f"sudo usermod -aG {files.BLUETOOTH_GROUP} {user}"),
        (WARN, member(files.RFKILL_GROUP), f"{user} is in {files.RFKILL_GROUP}",
         f"sudo usermod -aG {files.RFKILL_GROUP} {user}"),
        (WARN, writable, f"/dev/rfkill is writable by {user} (soft blocks lifted)",
         f"the udev rule {files.UDEV_RULE}: sudo udevadm trigger --subsystem-match=misc "
         "--sysname-match=rfkill"),
        (WARN, policy.exists() and f'user="{user}"' in policy.read_text(),
         f"the D-Bus policy lets {user} own org.mushpi.Ble ({files.POLICY})",
         "run setup again"),
    ]
    for name, entry in sorted(manifest.get("files", {}).items()):
        path = root / Path(name).relative_to("/")
        same = path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        rows.append((WARN, same, f"{name} as setup wrote it",
                     "changed or missing since: run setup again, or keep your change"))
    found = []
    for level, good, what, fix in rows:
        if good is None:
            found.append(Finding(INFO, "setup", f"{what}: nothing to check here"))
        else:
            found.append(Finding(OK if good else level, "setup",
                                 what if good else f"NOT: {what}; {fix}"))
    return found


def service_unit(root: Path = Path("/")) -> str:
    """The unit the service runs in: the one setup recorded, else the standalone one."""
    manifest = root / files.MANIFEST.relative_to("/")
    units = json.loads(manifest.read_text()).get("units", []) if manifest.exists() else []
    return units[0] if units else files.STANDALONE_UNIT


# -- who runs the check, and where bonds live ---------------------------------------------------
def root_finding(euid: int) -> Finding | None:
    if euid != 0:
        return None
    return Finding(WARN, "user", "check runs as root: root may do what the service user may "
                   "not; for the service's view run it as that user (sudo -u mushpi "
                   "mushpi-ble check)")


def mounts_of(text: str) -> dict[str, tuple[str, set[str]]]:
    """/proc/mounts as mount point -> (type, options); the last mount on a point wins."""
    found: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            found[parts[1]] = (parts[2], set(parts[3].split(",")))
    return found


def bond_storage_finding(settings: Settings, mounts_text: str,
                         state: str = "/var/lib/bluetooth") -> Finding | None:
    """Bonds live in bluetoothd's state folder: on a read-only or overlay root (Raspberry
    Pi OS's overlay file system) every pairing is forgotten at reboot."""
    mounts = mounts_of(mounts_text)
    point = max((p for p in mounts if state == p or state.startswith(p.rstrip("/") + "/")),
                key=len, default=None)
    if point is None:
        return None
    kind, options = mounts[point]
    volatile = kind in ("overlay", "tmpfs", "ramfs") or "ro" in options
    if not volatile:
        return None
    why = f"{state} is on {'a read-only' if 'ro' in options else 'an ' + kind} mount ({point})"
    if settings.access_bonded:
        return Finding(WARN, "bonds", f"{why}: access is bonded, and every bond is lost at "
                       "reboot (phones must pair again); keep /var/lib/bluetooth on a "
                       "persistent file system, or turn the overlay off (raspi-config)")
    return Finding(INFO, "bonds", f"{why}: pairings do not survive a reboot")


# -- the advert refusal's cure on this OS -------------------------------------------------------
@attrs.frozen
class Platform:
    """What decides the cure: Raspberry Pi OS or not, its kernel, its BlueZ."""

    raspberry_pi_os: bool
    kernel: str
    bluez: tuple[int, int] | None

    @classmethod
    def here(cls, bluez: tuple[int, int] | None,
             read: Callable[[str], str] = lambda p: Path(p).read_text()) -> Platform:
        def text(path: str) -> str:
            try:
                return read(path)
            except OSError:
                return ""
        release = text("/etc/os-release").lower()
        kernel = text("/proc/sys/kernel/osrelease").strip()
        pi = ("raspbian" in release or "+rpt" in kernel
              or bool(text("/etc/rpi-issue")))
        return cls(raspberry_pi_os=pi, kernel=kernel or "unknown", bluez=bluez)


def mismatch_cure(platform: Platform) -> str:
    """The kernel/BlueZ advertising mismatch: on Raspberry Pi OS the kernel is the cure
    (its BlueZ 5.82 will not become 5.87); elsewhere either side."""
    bluez = ".".join(map(str, platform.bluez)) if platform.bluez else "unknown"
    if platform.raspberry_pi_os:
        return (f"On Raspberry Pi OS the cure is a kernel update (this is {platform.kernel}; "
                "6.18.36 or later carries the fix): sudo apt update && sudo apt full-upgrade, "
                f"then reboot. Its BlueZ ({bluez}) will not get 5.87.")
    if platform.bluez is not None and platform.bluez >= FIXED_BLUEZ:
        return (f"BlueZ {bluez} has its side of the fix; the kernel ({platform.kernel}) "
                "refuses anyway: update the kernel.")
    return (f"Update the kernel ({platform.kernel}) to one with \"Bluetooth: MGMT: Fix "
            "backward compatibility with userspace\" (stable 6.18.36 or later; Debian's own "
            f"kernels have it), or BlueZ ({bluez}) to 5.87 or later.")
