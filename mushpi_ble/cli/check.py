"""``mushpi-ble check``: can the peripheral work on this machine? In plain words.

Checks, in order: the system bus, bluetoothd on it, its version and what
that means, the chosen adapter and its rfkill switches, advertising
capabilities, a test advertisement (registered and unregistered at once, the
probe the peripheral's own registration amounts to, with the same plain-words
advice when bluetoothd refuses it), and whether our D-Bus calls to
bluetoothd are permitted. Exits 1 when something makes the
peripheral unable to work, 0 otherwise (warnings do not fail).
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from mushpi_ble.approvals import ApprovalsError, read_approved
from mushpi_ble.cli import exits
from mushpi_ble.config import ConfigError, Settings, env_file_in_use, load_settings
from mushpi_ble.dbus import BusUnreachable, Connection, DBusError, open_connection
from mushpi_ble.gatt import (
    ADAPTER_IFACE,
    ADVERTISING_MANAGER_IFACE,
    AGENT_IFACE,
    AGENT_MANAGER_IFACE,
    AGENT_MANAGER_PATH,
    BLUEZ,
    DEVICE_IFACE,
    DOES_NOT_EXIST,
    GATT_MANAGER_IFACE,
    KERNEL_MISMATCH_ADVICE,
    Advertisement,
    AdvertPlan,
    Rfkill,
    agent_path,
    explain_refusal,
    managed_objects,
    pick_adapter,
)
from mushpi_ble.management_api import BUS_NAME as MANAGEMENT_NAME
from mushpi_ble.session.advert_interval import Interval
from mushpi_ble.text import printable

from . import check_system as system
from . import system_files as files
from .check_system import FAIL as FAIL
from .check_system import INFO as INFO
from .check_system import OK as OK
from .check_system import WARN as WARN
from .check_system import Finding as Finding
from .check_system import Platform

BLUETOOTHD_PATHS = ("/usr/libexec/bluetooth/bluetoothd", "/usr/lib/bluetooth/bluetoothd",
                    "/usr/sbin/bluetoothd")
PROBE_PATH = "/com/mushpi/check_probe"
PROBE_ADVERT_PATH = "/com/mushpi/check_probe_advert"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
MAIN_CONF = Path("/etc/bluetooth/main.conf")
KERNEL_DEFAULT_INTERVALS = (24, 40)
"""The kernel's LE connection interval defaults (units of 1.25 ms) when main.conf is silent."""
POLICY_FILES = (Path("/etc/dbus-1/system.d/org.mushpi.Ble.conf"),
                Path("/usr/share/dbus-1/system.d/org.mushpi.Ble.conf"))
SYSTEMD = "org.freedesktop.systemd1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bus", default="SYSTEM",
                        help="bus to check: SYSTEM (honours DBUS_SYSTEM_BUS_ADDRESS), or an "
                             "address")
    parser.add_argument("--bluetoothd", default=None,
                        help="path of the bluetoothd binary to ask for its version")
    parser.add_argument("--env-file", type=Path, default=None,
                        help="the settings file to check (default: the service's, "
                             f"{files.SETTINGS}, when setup installed it, else ./.env; "
                             "MUSHPI_ENV_FILE wins)")


def version_notes(version: tuple[int, int]) -> list[str]:
    """What a bluetoothd version means for this peripheral."""
    notes = []
    if version < (5, 66):
        notes.append("older than 5.66: application error codes (0x80-0x9F) all arrive as "
                     "0x80 on the phone")
    if version < (5, 69):
        notes.append("older than 5.69: one notify socket shared by every subscribed phone "
                     "(per-phone notify sockets need 5.69+)")
    if version < (5, 76):
        notes.append("older than 5.76: notifications go to every subscribed device "
                     "(per-device notify needs 5.76+)")
    if version < (5, 77):
        notes.append("older than 5.77: advertising intervals and tx power need bluetoothd -E "
                     "(experimental)")
    return notes


def bluetoothd_version(explicit: str | None) -> tuple[str | None, str]:
    """(version text, where it came from) — None when no binary answers."""
    candidates = [explicit] if explicit else [shutil.which("bluetoothd"), *BLUETOOTHD_PATHS]
    for path in candidates:
        if not path or not Path(path).exists():
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=5, check=False)
        except OSError as exc:
            return None, f"{path}: {exc}"
        text = (out.stdout or out.stderr).strip()
        if text:
            return text, path
    return None, "no bluetoothd binary found on this machine"


async def run_checks(settings: Settings, bus: str, bluetoothd: str | None,
                     platform: Platform | None = None) -> list[Finding]:
    findings: list[Finding] = [connection_interval_finding()]
    timeout = settings.bus_timeout_s
    version, where = bluetoothd_version(bluetoothd)
    parsed: tuple[int, int] | None = None
    if version is None:
        findings.append(Finding(WARN, "bluetoothd version", f"unknown ({where})"))
    else:
        match = re.search(r"(\d+)\.(\d+)", version)
        if match:
            parsed = (int(match.group(1)), int(match.group(2)))
            notes = version_notes(parsed)
            findings.append(Finding(OK if not notes else WARN, "bluetoothd version",
                                    f"{version} ({where})" + "".join(f"; {n}" for n in notes)))
        else:
            findings.append(Finding(WARN, "bluetoothd version", f"unrecognised: {version!r}"))
    findings.append(advert_interval_finding(settings, version, bluetoothd_experimental()))
    try:
        async with open_connection(bus, call_timeout=timeout) as conn:
            findings.append(Finding(OK, "D-Bus", f"bus reachable as {conn.unique_name}"))
            await _check_bluez(conn, settings, findings, platform=platform or Platform.here(parsed))
            findings.append(await systemd_finding(conn, timeout))
            findings.append(await access_finding(conn, settings))
            if settings.access_bonded:
                findings.extend(bonded_security_findings(settings))
                findings.append(await unapproved_bonds_finding(conn, settings))
    except BusUnreachable as exc:
        findings.append(Finding(FAIL, "D-Bus", f"cannot reach the bus: {exc}. Is dbus running? "
                                "(systemctl status dbus)"))
    return findings


async def _check_bluez(conn: Connection, settings: Settings, findings: list[Finding],
                       rfkill: Rfkill | None = None, platform: Platform | None = None) -> None:
    timeout = settings.bus_timeout_s
    owner = await conn.get_name_owner(BLUEZ)
    if not owner:
        findings.append(Finding(FAIL, "bluetoothd", f"{BLUEZ} is not on the bus: bluetoothd "
                                "is not running (sudo systemctl start bluetooth)"))
        return
    findings.append(Finding(OK, "bluetoothd", f"{BLUEZ} is owned by {owner}"))
    objects = await managed_objects(conn, timeout=timeout)
    adapters = sorted(p for p, i in objects.items() if ADAPTER_IFACE in i)
    names = ", ".join(p.rsplit("/", 1)[-1] for p in adapters) or "none"
    path = pick_adapter(objects, settings.ble_adapter)
    if path is None:
        findings.append(Finding(FAIL, "adapter", f"{settings.ble_adapter!r} "
                                f"(MUSHPI_BLE_ADAPTER) not found; bluetoothd has: {names}"))
        return
    props = {k: v[1] for k, v in objects[path][ADAPTER_IFACE].items()}
    powered = bool(props.get("Powered"))
    findings.append(Finding(
        OK if powered else WARN, "adapter",
        f"{path} address {props.get('Address')} alias {props.get('Alias')!r}, "
        + ("powered" if powered else "powered OFF (the peripheral powers it on at start; "
           "check rfkill if that fails)")))
    findings.append(rfkill_finding(rfkill or Rfkill(), path.rsplit("/", 1)[-1], settings))
    await _check_advertising(conn, settings, path, objects, findings)
    if objects[path].get(ADVERTISING_MANAGER_IFACE) is not None:
        findings.append(await advert_probe_finding(conn, settings, path, platform))
    await _check_permission(conn, settings, path, findings)
    await _check_pairing(conn, settings, owner, bool(props.get("Pairable", True)), findings)


async def _check_advertising(conn: Connection, settings: Settings, path: str,
                             objects: dict[str, Any], findings: list[Finding]) -> None:
    manager = objects[path].get(ADVERTISING_MANAGER_IFACE)
    if manager is None:
        level = FAIL if settings.ble_adv_enable else INFO
        findings.append(Finding(level, "advertising", "the adapter has no LE advertising "
                                "manager (phones will not discover it)"))
        return
    props = {k: v[1] for k, v in manager.items()}
    caps = {k: v[1] for k, v in dict(props.get("SupportedCapabilities", {})).items()}
    features = list(props.get("SupportedFeatures", []))
    findings.append(Finding(
        OK, "advertising",
        f"instances {props.get('ActiveInstances', '?')}/{props.get('SupportedInstances', '?')} "
        f"in use; includes {', '.join(props.get('SupportedIncludes', [])) or 'none'}; "
        f"max adv {caps.get('MaxAdvLen', 31)} B, scan response {caps.get('MaxScnRspLen', 31)} B; "
        f"tx power {'settable' if 'CanSetTxPower' in features else 'not settable'}"
        + (f" ({caps.get('MinTxPower')}..{caps.get('MaxTxPower')} dBm)"
           if "MinTxPower" in caps else "")))
    if props.get("SupportedInstances") == 0:
        findings.append(Finding(WARN, "advertising", "no free advertising instance"))


def rfkill_finding(rfkill: Rfkill, adapter_id: str, settings: Settings) -> Finding:
    state = rfkill.state(adapter_id)
    word = state.describe()
    if not state.known:
        return Finding(INFO, "rfkill", f"no rfkill switch for {adapter_id} is readable here")
    if state.hard:
        return Finding(FAIL, "rfkill", f"{adapter_id} is {word}: a switch or the firmware "
                       "blocks the radio and software cannot lift it")
    if state.soft:
        recovery = settings.ble_adapter_recovery
        return Finding(WARN, "rfkill", f"{adapter_id} is soft-blocked: " + (
            "the peripheral lifts it at start (or: sudo rfkill unblock bluetooth)" if recovery
            else "MUSHPI_BLE_ADAPTER_RECOVERY=false, so lift it: sudo rfkill unblock bluetooth"))
    return Finding(OK, "rfkill", f"{adapter_id} is unblocked")


async def advert_probe_finding(conn: Connection, settings: Settings, path: str,
                               platform: Platform | None = None) -> Finding:
    """Register a minimal advert (the service UUID only) and unregister it at once; a
    refusal is explained with the cure that fits this OS."""
    timeout = settings.bus_timeout_s
    plan = AdvertPlan(service_uuids=(settings.ble_service_uuid,), local_name=None, includes=(),
                      tx_power=None, size=21)
    advert = Advertisement(conn, PROBE_ADVERT_PATH, plan)
    try:
        await advert.register(path, timeout=timeout)
    except DBusError as exc:
        advice = explain_refusal(exc)
        if advice == KERNEL_MISMATCH_ADVICE and platform is not None:
            advice = f"{advice} {system.mismatch_cure(platform)}"
        return Finding(FAIL if settings.ble_adv_enable else WARN, "advertising probe", advice)
    finally:
        if advert.registered_on is None:
            advert.unexport()
    await advert.unregister(timeout=timeout)
    advert.unexport()
    return Finding(OK, "advertising probe", "bluetoothd accepted a test advertisement "
                   "(registered and unregistered again)")


async def _check_permission(conn: Connection, settings: Settings, path: str,
                            findings: list[Finding]) -> None:
    """Unregistering a path we never registered is harmless: bluetoothd answers
    DoesNotExist when we may talk to it, and the bus policy AccessDenied when not."""
    try:
        await conn.call(BLUEZ, path, GATT_MANAGER_IFACE, "UnregisterApplication",
                        "o", (PROBE_PATH,), timeout=settings.bus_timeout_s)
    except DBusError as exc:
        if exc.name == DOES_NOT_EXIST:
            findings.append(Finding(OK, "permissions", "D-Bus calls to bluetoothd are permitted"))
        elif exc.name.endswith("AccessDenied"):
            findings.append(Finding(FAIL, "permissions", "bluetoothd calls are denied by the "
                                    "D-Bus policy: run as root or a user in the 'bluetooth' "
                                    f"group ({exc.text})"))
        else:
            findings.append(Finding(WARN, "permissions", f"unexpected answer {exc.name}: "
                                    f"{exc.text}"))
        return
    findings.append(Finding(WARN, "permissions", "unexpected: the probe was unregistered"))


async def find_agent(conn: Connection, path: str, skip: set[str], *,
                     timeout: float) -> str | None:
    """Which connection exports an ``Agent1`` at ``path`` (a running peripheral), if any.

    Read-only and bounded: Introspect on each unique name, all at once.
    """
    names = await conn.call_bus("ListNames")
    found: list[str] = []

    async def ask(name: str) -> None:
        try:
            (xml,) = await conn.call(name, path, INTROSPECTABLE, "Introspect", timeout=timeout)
        except DBusError:
            return
        if f'"{AGENT_IFACE}"' in str(xml):
            found.append(name)

    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            for name in names:
                if name.startswith(":") and name not in skip:
                    nursery.start_soon(ask, name)
    return found[0] if found else None


async def _check_pairing(conn: Connection, settings: Settings, bluez: str, pairable: bool,
                         findings: list[Finding]) -> None:
    """Whether an agent is registered, and what a phone that asks to pair will meet.

    Unregistering an agent we never registered is harmless (DoesNotExist)
    and proves the agent manager answers us; nothing is registered.
    """
    timeout = settings.bus_timeout_s
    mode = settings.pairing_mode
    try:
        await conn.call(BLUEZ, AGENT_MANAGER_PATH, AGENT_MANAGER_IFACE, "UnregisterAgent", "o",
                        (PROBE_PATH,), timeout=timeout)
        manager = "answered"
    except DBusError as exc:
        manager = "answered" if exc.name == DOES_NOT_EXIST else exc.name
    path = agent_path(settings.dbus_app_path)
    owner = await find_agent(conn, path, {conn.unique_name, bluez}, timeout=min(timeout, 1.0))
    if manager != "answered":
        findings.append(Finding(WARN if mode != "off" else INFO, "pairing agent",
                                f"bluetoothd's AgentManager1 refused the probe ({manager}): "
                                "the peripheral cannot register its agent"))
    elif owner is not None:
        findings.append(Finding(OK, "pairing agent", f"registered: {path} exported by {owner} "
                                "(a running peripheral, bluetoothd's default agent)"))
    else:
        findings.append(Finding(INFO, "pairing agent", "none of ours is registered now (no "
                                "peripheral running)" + ("; the peripheral registers one at "
                                                         "start" if mode != "off" else "")))
    if not pairable:
        meets = "refused: the adapter is not pairable (bluetoothctl pairable on)"
    elif mode == "off":
        meets = ("MUSHPI_BLE_PAIRING=off: no agent of ours, so a phone that asks to pair "
                 "fails (\"No agent available\") unless another agent is registered")
    else:
        meets = f"MUSHPI_BLE_PAIRING={mode}: " + {
            "just-works": "accepted without a PIN (encrypted, bonded, no MITM protection)",
            "window": "accepted without a PIN only while a pairing window is open "
                      "(mushpi-ble pair)",
            "passkey": "the phone's user types the 6-digit passkey the peripheral shows "
                       "(MITM protection), only while a pairing window is open",
        }[mode] + ("" if owner else " once the peripheral runs")
    findings.append(Finding(WARN if not pairable and mode != "off" else INFO,
                            "pairing request", meets))


def connection_interval_finding(main_conf: Path = MAIN_CONF) -> Finding:
    """The LE connection interval bluetoothd asks for, against Apple's rules (minimum at
    least 15 ms and a multiple of 15 ms, maximum at least the minimum + 15 ms): iPhones
    refuse or renegotiate parameters outside them."""
    parser = configparser.ConfigParser(strict=False, comment_prefixes=("#", ";"),
                                       interpolation=None)
    try:
        parser.read(main_conf)
    except configparser.Error as exc:
        return Finding(WARN, "connection interval", f"{main_conf} unreadable: {exc}")
    section = parser["LE"] if parser.has_section("LE") else {}
    units: list[int] = []
    for key, default in zip(("MinConnectionInterval", "MaxConnectionInterval"),
                            KERNEL_DEFAULT_INTERVALS, strict=True):
        raw = section.get(key, "").strip()
        try:
            units.append(int(raw, 0) if raw else default)
        except ValueError:
            return Finding(WARN, "connection interval", f"[LE] {key}={raw!r} is not a number")
    low_ms, high_ms = (u * 1.25 for u in units)
    where = f"{main_conf} [LE]" if section else "kernel defaults (main.conf sets none)"
    problems = []
    if low_ms < 15:
        problems.append("minimum below 15 ms")
    if round(low_ms * 100) % 1500:
        problems.append("minimum not a multiple of 15 ms")
    if high_ms < low_ms + 15:
        problems.append("maximum less than minimum + 15 ms")
    text = f"{low_ms:g}..{high_ms:g} ms from {where}"
    if problems:
        return Finding(WARN, "connection interval", f"{text}: outside Apple's rules ("
                       + ", ".join(problems) + "); iPhones may renegotiate or drop the link")
    return Finding(OK, "connection interval", f"{text}: within Apple's rules")


async def systemd_finding(conn: Connection, timeout: float,
                          environ: dict[str, str] | None = None,
                          unit: str | None = None) -> Finding:
    """Does the service run under systemd, as Type=notify with the watchdog? (The unit
    setup installed or gave a drop-in, else the standalone one.)"""
    env = os.environ if environ is None else environ
    unit_name = unit or system.service_unit()
    if env.get("NOTIFY_SOCKET"):
        watchdog = env.get("WATCHDOG_USEC")
        return Finding(OK if watchdog else WARN, "systemd",
                       "this process runs under systemd" + (
                           f" with a {int(watchdog) / 1e6:g} s watchdog" if watchdog
                           else " without a watchdog"))
    try:
        reply = await conn.call(SYSTEMD, "/org/freedesktop/systemd1",
                                "org.freedesktop.systemd1.Manager", "GetUnit", "s",
                                (unit_name,), timeout=timeout)
    except DBusError as exc:
        return Finding(INFO, "systemd", f"{unit_name} is not loaded ({exc.name}); "
                       "`mushpi-ble systemd-unit` prints a unit with the watchdog")
    unit_path = reply[0]
    props: dict[str, Any] = {}
    for iface, names in (("org.freedesktop.systemd1.Unit", ("ActiveState",)),
                         ("org.freedesktop.systemd1.Service", ("Type", "WatchdogUSec"))):
        for name in names:
            value = await conn.call(SYSTEMD, unit_path, "org.freedesktop.DBus.Properties",
                                    "Get", "ss", (iface, name), timeout=timeout)
            props[name] = value[0][1]
    watchdog_s = int(props["WatchdogUSec"]) / 1e6
    good = props["Type"] == "notify" and watchdog_s > 0
    return Finding(OK if good else WARN, "systemd",
                   f"{unit_name} is {props['ActiveState']}, Type={props['Type']}, watchdog "
                   + (f"{watchdog_s:g} s" if watchdog_s else "off"))


async def access_finding(conn: Connection, settings: Settings,
                         policy_files: tuple[Path, ...] = POLICY_FILES) -> Finding:
    """Who may steer the room, and whether `mushpi-ble pair` / `bonds` can reach it."""
    modes = (f"write={settings.ble_write_access} read={settings.ble_read_access} "
             f"pairing={settings.pairing_mode}")
    try:
        owner = await conn.get_name_owner(MANAGEMENT_NAME)
    except DBusError:
        owner = ""
    if owner:
        return Finding(OK, "access", f"{modes}; a running peripheral ({owner}) serves "
                       f"{MANAGEMENT_NAME} for `mushpi-ble pair` and `bonds`")
    installed = [p for p in policy_files if p.exists()]
    where = (f"the D-Bus policy is installed ({installed[0]})" if installed else
             f"no D-Bus policy for {MANAGEMENT_NAME} in {policy_files[0].parent}: on the "
             "system bus `mushpi-ble pair` and `bonds` need `mushpi-ble dbus-policy`")
    level = WARN if settings.access_bonded and not installed else INFO
    return Finding(level, "access", f"{modes}; no peripheral running; {where}")


def report(findings: list[Finding]) -> str:
    width = max((len(f.topic) for f in findings), default=10)
    lines = [f"[{f.level:>4}] {f.topic:<{width}}  {f.message}" for f in findings]
    failed = [f for f in findings if f.level == FAIL]
    lines.append("")
    lines.append("the peripheral cannot work here: " + "; ".join(f.topic for f in failed)
                 if failed else "the peripheral can work here")
    return "\n".join(lines)


def system_findings(settings: Settings, env_file: Path) -> list[Finding]:
    """The settings file read, the pieces of setup, who runs this, where bonds live."""
    source = env_file_in_use(env_file=env_file)
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        mounts = ""
    return [system.settings_finding(source, env_file),
            *filter(None, [system.root_finding(os.geteuid()),
                           system.bond_storage_finding(settings, mounts)]),
            *system.setup_findings()]


def run(args: argparse.Namespace) -> int:
    env_file = args.env_file or system.default_env_file()
    if args.env_file is not None and not args.env_file.is_file():
        print(f"[FAIL] settings  --env-file {args.env_file} does not exist")
        return 1
    try:
        settings = load_settings(env_file=env_file)
    except ConfigError as exc:
        print(f"[FAIL] configuration  {exc}")
        return exits.CONFIG
    findings = [*system_findings(settings, env_file),
                *trio.run(run_checks, settings, args.bus, args.bluetoothd)]
    print(report(findings))
    sys.stdout.flush()
    return 1 if any(f.level == FAIL for f in findings) else 0


def bonded_security_findings(settings: Settings, main_conf: Path = MAIN_CONF) -> list[Finding]:
    """Where access is bonded: bluetoothd's settings that decide what a bond is worth."""
    parser = configparser.ConfigParser(strict=False, comment_prefixes=("#", ";"),
                                       interpolation=None)
    try:
        parser.read(main_conf)
    except configparser.Error as exc:
        return [Finding(WARN, "bonded access", f"{main_conf} unreadable: {exc}")]
    general = parser["General"] if parser.has_section("General") else {}

    def value(key: str, default: str) -> tuple[str, str]:
        raw = general.get(key, "").strip()
        return (raw.lower(), f"{key}={raw} in {main_conf}") if raw else \
            (default, f"{key} unset, bluetoothd's default {default}")

    mode, mode_from = value("ControllerMode", "dual")
    repairing, repairing_from = value("JustWorksRepairing", "never")
    secure, secure_from = value("SecureConnections", "on")
    findings = [
        Finding(OK, "BR/EDR", f"off ({mode_from})") if mode == "le" else Finding(
            WARN, "BR/EDR", f"on ({mode_from}): the kernel accepts BR/EDR Just Works pairing "
            "without asking any agent; such bonds are not approved and BR/EDR requests are "
            f"refused, but turn it off: `ControllerMode = le` under [General] in {main_conf}, "
            "then `sudo systemctl restart bluetooth`"),
        Finding(OK if repairing == "never" else WARN, "Just Works re-pairing",
                f"{repairing} ({repairing_from})" + ("" if repairing == "never" else
                ": a device claiming a bonded phone's address may replace its keys; "
                "`JustWorksRepairing = never` keeps the bond the grower approved")),
        Finding(OK if secure in ("on", "only") else WARN, "Secure Connections",
                f"{secure} ({secure_from})" + ("" if secure in ("on", "only") else
                ": legacy LE pairing can be decrypted by anyone who hears it; "
                "`SecureConnections = on`")),
    ]
    return findings


async def unapproved_bonds_finding(conn: Connection, settings: Settings) -> Finding:
    """Bonds bluetoothd has that the grower has not approved (read from the state
    directory, nothing changed): bonded access refuses them."""
    try:
        approved = set(read_approved(settings.ble_state_dir))
    except ApprovalsError as exc:
        return Finding(WARN, "approved bonds", f"{settings.ble_state_dir} holds a damaged list "
                       f"({exc}): the peripheral will keep it aside and approve nothing")
    try:
        objects = await managed_objects(conn, timeout=settings.bus_timeout_s)
    except DBusError as exc:
        return Finding(INFO, "approved bonds", f"bonds unknown ({exc.name})")
    path = pick_adapter(objects, settings.ble_adapter)
    bonds = [] if path is None else [
        {k: v[1] for k, v in ifaces[DEVICE_IFACE].items()}
        for dev, ifaces in objects.items()
        if dev.startswith(path + "/dev_") and DEVICE_IFACE in ifaces]
    strangers = [f"{printable(str(d.get('Address', '?')))} "
                 f"({printable(str(d.get('Name') or d.get('Alias') or '-'), 24)})"
                 for d in bonds if (d.get("Paired") or d.get("Bonded"))
                 and str(d.get("Address", "")).upper() not in approved]
    if strangers:
        return Finding(WARN, "approved bonds", f"{len(strangers)} bonded but not approved, "
                       "refused by bonded access: " + ", ".join(strangers) + "; approve your "
                       "own (mushpi-ble bonds --approve ADDRESS), remove the others "
                       "(mushpi-ble bonds --remove ADDRESS)")
    return Finding(OK, "approved bonds", f"{len(approved)} approved in "
                   f"{settings.ble_state_dir}; every bond is approved")
def bluetoothd_experimental(proc: Path = Path("/proc")) -> bool | None:
    """Whether the running bluetoothd was started with -E / --experimental (None: none
    found, or its command line cannot be read)."""
    try:
        entries = list(proc.iterdir())
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and Path(argv[0].decode(errors="replace")).name == "bluetoothd":
            return any(a in (b"-E", b"--experimental") or
                       (a.startswith(b"-") and not a.startswith(b"--") and b"E" in a)
                       for a in argv[1:])
    return None


def advert_interval_finding(settings: Settings, version: str | None,
                            experimental: bool | None) -> Finding:
    """The advertising interval in force: bluetoothd 5.77+ takes MinInterval/MaxInterval;
    before, only with -E, and without it silently advertises at its default (~1.28 s)."""
    title = "advertising interval"
    if not settings.ble_adv_enable:
        return Finding(INFO, title, "advertising is off (MUSHPI_BLE_ADV_ENABLE=false)")
    if not settings.ble_advert_intervals:
        return Finding(INFO, title, "bluetoothd's default, about 1.28 s "
                       "(MUSHPI_BLE_ADVERT_INTERVALS=false)")
    fast = Interval("fast", settings.ble_advert_fast_ms).on_air_ms
    slow = Interval("slow", settings.ble_advert_slow_ms).on_air_ms
    asked = (f"{fast:g} ms for {settings.ble_advert_fast_s} s after a start, a disconnect "
             f"or a pairing window, then {slow:g} ms")
    match = re.search(r"(\d+)\.(\d+)", version or "")
    if match is None:
        return Finding(WARN, title, f"{asked} if bluetoothd takes it (5.77+, or -E before); "
                       "its version is unknown. get_status()['advert_interval'] shows a "
                       "refusal")
    parsed = (int(match.group(1)), int(match.group(2)))
    if parsed >= (5, 77) or experimental:
        how = "5.77+" if parsed >= (5, 77) else "-E"
        return Finding(OK, title, f"{asked} (bluetoothd {version}, {how}); a kernel that "
                       "refuses it gets bluetoothd's default, said in get_status()")
    return Finding(WARN, title, f"bluetoothd's default, about 1.28 s: bluetoothd {version} "
                   "ignores MinInterval/MaxInterval without -E (experimental; stable from "
                   f"5.77). Add -E to its ExecStart for {asked}")
