"""``mushpi-ble setup``: the system pieces BLE needs, installed once as root.

The service user (created as a system user when missing) joins ``bluetooth`` and a
group a udev rule lets write ``/dev/rfkill``; our D-Bus policy for ``org.mushpi.Ble``;
then either a drop-in for the controller's own unit (``--unit``) or the ``serve`` unit
with its settings file (``--standalone``). Idempotent; ``--dry-run`` prints every file
and command; ``--remove`` undoes exactly what the manifest says was done; ``--root``
writes into an alternate root (packagers, tests) and runs nothing on the live system.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from mushpi_ble.config import render_env_example

from . import system_files as files

UNIT_NAME_RE = re.compile(r"[A-Za-z0-9:_.\\@-]+\.service")
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", default="mushpi",
                        help="the user the service runs as (default mushpi; created as a "
                             "system user without a login shell if missing)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--unit", metavar="NAME.service",
                        help="the controller's unit: gets a drop-in with what BLE needs")
    target.add_argument("--standalone", action="store_true",
                        help=f"install {files.STANDALONE_UNIT}: `serve`, a SIMULATED "
                             "controller, for trying BLE before the controller")
    parser.add_argument("--notify", action="store_true",
                        help="the controller reports readiness through the BLE layer "
                             "(MUSHPI_BLE_SYSTEMD_NOTIFY): Type=notify and WatchdogSec")
    parser.add_argument("--watchdog-s", type=int, default=files.DEFAULT_WATCHDOG_S,
                        help="WatchdogSec with --notify and --standalone (default 30)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="the port of MUSHPI_BLE_METRICS_PORT, if used: the unit may "
                             "then use AF_INET/AF_INET6")
    parser.add_argument("--network", action="store_true",
                        help="the controller uses IP itself (a dashboard, MQTT): AF_INET and "
                             "AF_INET6, no PrivateNetwork")
    parser.add_argument("--writable", action="append", default=[], metavar="PATH",
                        help="a path the controller writes (ReadWritePaths); repeatable")
    parser.add_argument("--allow-device", action="append", default=[], metavar="DEVICE",
                        help="a device the controller uses, as DeviceAllow takes it "
                             "(e.g. 'char-gpiochip rw'); repeatable")
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="install into this root instead of / (runs no command on "
                             "the live system)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every file and command; change nothing")
    parser.add_argument("--remove", action="store_true",
                        help="undo what earlier runs of setup did (from its manifest)")


@attrs.define
class Context:
    """Where and how setup acts; every step reports through ``say``."""

    root: Path
    dry_run: bool
    say: Callable[[str], None]
    manifest: dict[str, Any]
    commands: list[list[str]] = attrs.Factory(list)

    @property
    def live(self) -> bool:
        return self.root == Path("/")

    def at(self, path: Path) -> Path:
        return self.root / path.relative_to("/")

    def run(self, argv: list[str], *, live_only: bool = True, check: bool = True) -> bool:
        """Run a command (in dry-run: print it). Live-system commands are skipped under
        --root, and commands whose program is missing are reported, not run."""
        shown = " ".join(argv)
        if live_only and not self.live:
            self.say(f"skip (alternate root): {shown}")
            return False
        if self.dry_run:
            self.say(f"would run: {shown}")
            return False
        if shutil.which(argv[0]) is None:
            self.say(f"skip ({argv[0]} not installed): {shown}")
            return False
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        self.say(f"ran: {shown}" + (f" -> exit {done.returncode}: "
                                    f"{(done.stderr or done.stdout).strip()}"
                                    if done.returncode else ""))
        if check and done.returncode:
            raise SetupFailed(f"{shown} failed with exit code {done.returncode}")
        return done.returncode == 0


class SetupFailed(RuntimeError):
    """A step could not be done; what was done so far is in the manifest."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _root_args(ctx: Context) -> list[str]:
    return [] if ctx.live else ["--root", str(ctx.root.absolute())]


def read_db(ctx: Context, name: str) -> dict[str, list[str]]:
    """``/etc/passwd`` or ``/etc/group`` of the root: name -> fields."""
    path = ctx.at(Path("/etc") / name)
    if not path.exists():
        return {}
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()
            if line and not line.startswith("#")}


def members(ctx: Context, group: str) -> list[str]:
    fields = read_db(ctx, "group").get(group)
    return [m for m in fields[3].split(",") if m] if fields and len(fields) > 3 else []


# -- steps: each does its part if it is missing and records it in the manifest ------------
def ensure_group(ctx: Context, group: str) -> None:
    if group in read_db(ctx, "group"):
        ctx.say(f"group {group}: present")
        return
    ctx.run(["groupadd", "--system", *_root_args(ctx), group], live_only=False)
    if not ctx.dry_run:
        ctx.manifest["groups"].append(group)


def ensure_user(ctx: Context, user: str) -> None:
    if user in read_db(ctx, "passwd"):
        ctx.say(f"user {user}: present")
        return
    had_group = user in read_db(ctx, "group")
    ctx.run(["useradd", "--system", *_root_args(ctx), "--home-dir", f"/var/lib/{user}",
             "--no-create-home", "--shell", "/usr/sbin/nologin",
             *(["--gid", user] if had_group else ["--user-group"]),
             "--comment", "MushPi BLE service", user], live_only=False)
    if not ctx.dry_run:
        ctx.manifest["users"].append(user)
        if not had_group:
            ctx.manifest["groups"].append(user)


def ensure_member(ctx: Context, user: str, group: str) -> None:
    if user in members(ctx, group):
        ctx.say(f"{user} in group {group}: already")
        return
    ctx.run(["usermod", *_root_args(ctx), "--append", "--groups", group, user],
            live_only=False)
    if not ctx.dry_run:
        ctx.manifest["members"].append([user, group])


def write_file(ctx: Context, path: Path, text: str, *, mode: int = 0o644,
               group: str | None = None, keep_existing: bool = False) -> bool:
    """Write ``path`` (True when it changed). ``keep_existing``: a file already there is
    the operator's (settings) and stays as it is."""
    target = ctx.at(path)
    old = target.read_text() if target.exists() else None
    if old is not None and (keep_existing or old == text):
        ctx.say(f"file {path}: " + ("kept (the operator's)" if old != text else "up to date"))
        return False
    if ctx.dry_run:
        ctx.say(f"would write {path} (mode {mode:o}):\n" + _indent(text))
        return False
    make_folders(ctx, path.parent)
    tmp = target.with_name(target.name + ".mushpi-tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    if group is not None:
        gid = read_db(ctx, "group").get(group)
        if gid is not None:
            os.chown(tmp, 0, int(gid[2]))
    os.replace(tmp, target)
    entry = ctx.manifest["files"].get(str(path))
    previous = entry["previous"] if entry else old
    ctx.manifest["files"][str(path)] = {"sha256": _sha(text), "previous": previous}
    ctx.say(f"wrote {path} (mode {mode:o})")
    return True


def make_folders(ctx: Context, folder: Path) -> None:
    """Create ``folder`` and its missing parents, remembering each for --remove."""
    missing = [f for f in (folder, *folder.parents) if not ctx.at(f).exists()]
    for made in reversed(missing):
        ctx.at(made).mkdir(mode=0o755)
        if str(made) not in ctx.manifest["folders"]:
            ctx.manifest["folders"].append(str(made))


def _indent(text: str) -> str:
    return "".join(f"    | {line}\n" for line in text.splitlines())


# -- the manifest ---------------------------------------------------------------------------
EMPTY: dict[str, Any] = {"files": {}, "folders": [], "trees": [], "users": [], "groups": [],
                         "members": [], "units": [], "enabled": [], "settings_file": None,
                         "user": None, "device": None}


def load_manifest(root: Path) -> dict[str, Any]:
    path = root / files.MANIFEST.relative_to("/")
    data = json.loads(path.read_text()) if path.exists() else {}
    return {key: data.get(key, json.loads(json.dumps(value))) for key, value in EMPTY.items()}


def save_manifest(ctx: Context) -> None:
    if ctx.dry_run:
        return
    path = ctx.at(files.MANIFEST)
    make_folders(ctx, files.MANIFEST.parent)
    path.write_text(json.dumps(ctx.manifest, indent=2, sort_keys=True) + "\n")


# -- set up ---------------------------------------------------------------------------------
def service_for(args: argparse.Namespace) -> files.Service:
    return files.Service(user=args.user, notify=args.notify, watchdog_s=args.watchdog_s,
                         metrics_port=args.metrics_port, network=args.network,
                         writable=tuple(args.writable),
                         devices=tuple(args.allow_device))


def set_up(ctx: Context, args: argparse.Namespace) -> None:
    user = args.user
    service = service_for(args)
    ctx.manifest["user"] = user
    for group in (files.BLUETOOTH_GROUP, files.RFKILL_GROUP):
        ensure_group(ctx, group)
    ensure_user(ctx, user)
    for group in (files.BLUETOOTH_GROUP, files.RFKILL_GROUP):
        ensure_member(ctx, user, group)
    save_manifest(ctx)
    remember_device(ctx)
    if write_file(ctx, files.UDEV_RULE, files.UDEV_TEXT) or ctx.dry_run:
        ctx.run(["udevadm", "control", "--reload"], check=False)
    # applied to the existing /dev/rfkill at once, not at the next boot
    ctx.run(["udevadm", "trigger", "--action=change", "--subsystem-match=misc",
             "--sysname-match=rfkill"], check=False)
    ctx.run(["udevadm", "settle", "--timeout=10"], check=False)
    if write_file(ctx, files.POLICY, files.policy_text(user)) or ctx.dry_run:
        reload_bus_policy(ctx)
    state_dir = f"/var/lib/{files.BLE_STATE_DIRECTORY}"
    if (not ctx.at(Path(state_dir)).exists() and state_dir not in ctx.manifest["trees"]
            and not ctx.dry_run):
        ctx.manifest["trees"].append(state_dir)  # systemd makes it (StateDirectory): ours
    units: list[str] = []  # the service's own units (check reads the first)
    reload = write_file(ctx, files.dropin_path(files.BLUETOOTHD_UNIT),
                        files.bluetoothd_dropin_text()) or ctx.dry_run
    if args.standalone:
        written = write_file(ctx, files.SETTINGS, render_env_example(), mode=0o640,
                             group=user, keep_existing=True)
        if written:
            ctx.manifest["settings_file"] = str(files.SETTINGS)
        write_file(ctx, files.UNIT_DIR / files.STANDALONE_UNIT,
                   files.standalone_text(service))
        units.append(files.STANDALONE_UNIT)
        state = f"/var/lib/{files.STATE_DIRECTORY}"  # systemd makes it (StateDirectory)
        if state not in ctx.manifest["trees"] and not ctx.dry_run:
            ctx.manifest["trees"].append(state)
    elif args.unit:
        write_file(ctx, files.dropin_path(args.unit), files.dropin_text(args.unit, service))
        units.append(args.unit)
    for unit in units:
        if unit not in ctx.manifest["units"] and not ctx.dry_run:
            ctx.manifest["units"].append(unit)
    save_manifest(ctx)
    if units or reload:
        ctx.run(["systemctl", "daemon-reload"], check=False)
    if args.standalone:
        if ctx.run(["systemctl", "enable", "--now", files.STANDALONE_UNIT], check=False) \
                and files.STANDALONE_UNIT not in ctx.manifest["enabled"]:
            ctx.manifest["enabled"].append(files.STANDALONE_UNIT)
        save_manifest(ctx)
    elif args.unit:
        ctx.say(f"restart {args.unit} to apply its drop-in (systemctl restart {args.unit})")


def remember_device(ctx: Context) -> None:
    """/dev/rfkill's owner and mode before our rule, restored by --remove (udev applies
    the default rules on a change event, but leaves the group it no longer names)."""
    if not ctx.live or ctx.dry_run or ctx.manifest["device"] is not None:
        return
    try:
        info = os.stat(files.RFKILL_DEVICE)
    except OSError:
        return
    ctx.manifest["device"] = {"uid": info.st_uid, "gid": info.st_gid,
                              "mode": info.st_mode & 0o7777}


def restore_device(ctx: Context) -> None:
    before = ctx.manifest["device"]
    if before is None or not ctx.live:
        return
    if ctx.dry_run:
        ctx.say(f"would give {files.RFKILL_DEVICE} back its owner and mode")
        return
    try:
        os.chown(files.RFKILL_DEVICE, before["uid"], before["gid"])
        os.chmod(files.RFKILL_DEVICE, before["mode"])
    except OSError as exc:
        ctx.say(f"{files.RFKILL_DEVICE}: could not restore its owner and mode ({exc})")
    else:
        ctx.say(f"{files.RFKILL_DEVICE}: owner {before['uid']}:{before['gid']}, mode "
                f"{before['mode']:o} again")
    ctx.manifest["device"] = None


def reload_bus_policy(ctx: Context) -> None:
    """dbus-daemon re-reads its policy on ReloadConfig (and on its own, a little later)."""
    ctx.run(["dbus-send", "--system", "--type=method_call", "--print-reply",
             "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
             "org.freedesktop.DBus.ReloadConfig"], check=False)


# -- remove ---------------------------------------------------------------------------------
def remove(ctx: Context) -> None:
    manifest = ctx.manifest
    for unit in list(manifest["enabled"]):
        ctx.run(["systemctl", "disable", "--now", unit], check=False)
        if not ctx.dry_run:
            manifest["enabled"].remove(unit)
    reload = str(files.dropin_path(files.BLUETOOTHD_UNIT)) in manifest["files"]
    for name, entry in list(manifest["files"].items()):
        remove_file(ctx, Path(name), entry)
    for tree in list(manifest["trees"]):
        if ctx.dry_run:
            ctx.say(f"would remove {tree} (state the service kept there)")
            continue
        shutil.rmtree(ctx.at(Path(tree)), ignore_errors=True)
        manifest["trees"].remove(tree)
        ctx.say(f"removed {tree} (state the service kept there)")
    if manifest["units"] or reload:
        ctx.run(["systemctl", "daemon-reload"], check=False)
    if not ctx.dry_run:
        manifest["units"] = []
    ctx.run(["udevadm", "control", "--reload"], check=False)
    ctx.run(["udevadm", "trigger", "--action=change", "--subsystem-match=misc",
             "--sysname-match=rfkill"], check=False)
    ctx.run(["udevadm", "settle", "--timeout=10"], check=False)
    restore_device(ctx)
    reload_bus_policy(ctx)
    for user, group in list(manifest["members"]):
        if user in members(ctx, group):
            ctx.run(["gpasswd", *_root_args(ctx), "--delete", user, group], live_only=False)
        if not ctx.dry_run:
            manifest["members"].remove([user, group])
    for user in list(manifest["users"]):
        if user in read_db(ctx, "passwd"):
            ctx.run(["userdel", *_root_args(ctx), user], live_only=False)
        if not ctx.dry_run:
            manifest["users"].remove(user)
    for group in list(manifest["groups"]):
        if group in read_db(ctx, "group"):
            ctx.run(["groupdel", *_root_args(ctx), group], live_only=False)
        if not ctx.dry_run:
            manifest["groups"].remove(group)
    if ctx.dry_run:
        ctx.say(f"would remove {files.MANIFEST}")
        return
    ctx.at(files.MANIFEST).unlink(missing_ok=True)
    ctx.say(f"removed {files.MANIFEST}")
    for folder in sorted(manifest["folders"], key=len, reverse=True):
        target = ctx.at(Path(folder))
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
            ctx.say(f"removed folder {folder} (setup made it; empty)")
        elif target.is_dir():
            ctx.say(f"folder {folder}: kept (not empty)")


def remove_file(ctx: Context, path: Path, entry: dict[str, Any]) -> None:
    """Delete (or restore) a file of ours; one changed since is the operator's and stays."""
    target = ctx.at(path)
    if not target.exists():
        ctx.say(f"file {path}: already gone")
    elif _sha(target.read_text()) != entry["sha256"]:
        ctx.say(f"file {path}: changed since setup wrote it; kept")
    elif ctx.dry_run:
        ctx.say(f"would {'restore' if entry['previous'] is not None else 'remove'} {path}")
        return
    elif entry["previous"] is not None:
        target.write_text(entry["previous"])
        ctx.say(f"restored {path} as it was before setup")
    else:
        target.unlink()
        ctx.say(f"removed {path}")
    if not ctx.dry_run:
        del ctx.manifest["files"][str(path)]


# -- the command ----------------------------------------------------------------------------
def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, in words; None when they are fine."""
    problems = [
        (not USER_RE.fullmatch(args.user), f"--user {args.user!r} is not a valid user name"),
        (args.unit is not None and not UNIT_NAME_RE.fullmatch(args.unit or ""),
         f"--unit {args.unit!r} must name a .service unit"),
        (args.watchdog_s < 2, "--watchdog-s must be at least 2"),
        (args.metrics_port is not None and not 1 <= args.metrics_port <= 65535,
         "--metrics-port must be 1..65535"),
        (args.remove and (args.unit or args.standalone or args.notify),
         "--remove takes no --unit, --standalone or --notify: it undoes what the manifest "
         "records"),
        (not args.root.is_dir(), f"--root {args.root} is not a folder"),
        (not args.dry_run and os.geteuid() != 0, "setup changes the system: run it as root "
         "(sudo), or look first with --dry-run"),
    ]
    return next((text for bad, text in problems if bad), None)


def run(args: argparse.Namespace) -> int:
    problem = check_arguments(args)
    if problem:
        print(f"setup: {problem}", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        print(f"setup: {text}", flush=True)

    ctx = Context(root=args.root, dry_run=args.dry_run, say=say,
                  manifest=load_manifest(args.root))
    say(("dry run, nothing changes; " if args.dry_run else "")
        + f"root {args.root}" + (" (alternate: no command runs on this system)"
                                 if not ctx.live else ""))
    try:
        if args.remove:
            remove(ctx)
        else:
            set_up(ctx, args)
    except SetupFailed as exc:
        save_manifest(ctx)
        print(f"setup: {exc}", file=sys.stderr)
        return 1
    say("done" if not args.dry_run else "dry run done: nothing was changed")
    return 0
