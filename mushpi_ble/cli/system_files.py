"""The system pieces ``mushpi-ble setup`` installs, as text: one place for their names,
paths and contents, so ``setup``, ``systemd-unit`` and ``check`` cannot disagree.

The service's hardening is a table of directives (:data:`HARDENING`), each with the
condition under which it applies; the unit and the controller's drop-in both render it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import attrs

from mushpi_ble.management_api import policy_file

from . import exits

RFKILL_GROUP = "mushpi-rfkill"
"""The group that may write /dev/rfkill (not ``netdev``, which also drives Wi-Fi)."""
BLUETOOTH_GROUP = "bluetooth"
"""The group BlueZ's D-Bus policy lets talk to org.bluez (Debian, Raspberry Pi OS)."""
UDEV_RULE = Path("/etc/udev/rules.d/70-mushpi-rfkill.rules")
RFKILL_DEVICE = Path("/dev/rfkill")
POLICY = Path("/etc/dbus-1/system.d/org.mushpi.Ble.conf")
SETTINGS = Path("/etc/mushpi/ble.env")
MANIFEST = Path("/var/lib/mushpi-ble/setup.json")
"""What setup did (files and their hashes, users, groups, memberships), for --remove and check."""
UNIT_DIR = Path("/etc/systemd/system")
DROPIN = "50-mushpi-ble.conf"
STANDALONE_UNIT = "mushpi-ble-sim.service"
STATE_DIRECTORY = "mushpi-ble-sim"
BLE_STATE_DIRECTORY = "mushpi"
"""MUSHPI_BLE_STATE_DIR's default, /var/lib/mushpi: systemd makes it, writable by the
service under ProtectSystem=strict (bonded access keeps its approved phones there)."""
CONFIG_EXIT_STATUS = exits.CONFIG
"""``serve`` exits 3 on a bad setting; a controller should too (restarting cannot fix it)."""
DEFAULT_WATCHDOG_S = 30

UDEV_TEXT = f"""\
# mushpi-ble setup: members of {RFKILL_GROUP} may lift an rfkill soft block of the
# Bluetooth adapter (/dev/rfkill is root:root 0664 otherwise).
KERNEL=="rfkill", SUBSYSTEM=="misc", GROUP="{RFKILL_GROUP}", MODE="0664"
"""


def exec_start() -> str:
    """The command that runs this install: its console script, else ``python -m``."""
    script = Path(sys.executable).with_name("mushpi-ble")
    if script.exists():
        return str(script)
    found = shutil.which("mushpi-ble")
    return found if found else f"{sys.executable} -m mushpi_ble.cli"


def under_home(path: str) -> bool:
    """An install under /home needs /home readable: ProtectHome=yes would fail with
    203/EXEC, so it gets read-only instead."""
    return Path(path.split()[0]).absolute().is_relative_to("/home")


@attrs.frozen(kw_only=True)
class Service:
    """What the unit or drop-in is for: who runs it, how, and what it may reach."""

    user: str = "mushpi"
    exec_start: str = attrs.field(factory=exec_start)
    notify: bool = False
    watchdog_s: int = DEFAULT_WATCHDOG_S
    metrics_port: int | None = None
    network: bool = False
    """The controller talks IP itself (a dashboard, MQTT): no PrivateNetwork, AF_INET."""
    writable: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    tasks_max: int = 256


# directive, value, when: "always", "no-network", "network", "home", "not-home", "notify"
HARDENING: tuple[tuple[str, str, str], ...] = (
    ("SupplementaryGroups", f"{BLUETOOTH_GROUP} {RFKILL_GROUP}", "always"),
    ("StateDirectory", BLE_STATE_DIRECTORY, "always"),
    ("DevicePolicy", "closed", "always"),
    ("DeviceAllow", "/dev/rfkill rw", "always"),
    ("NoNewPrivileges", "yes", "always"),
    ("CapabilityBoundingSet", "", "always"),
    ("AmbientCapabilities", "", "always"),
    ("RestrictAddressFamilies", "AF_UNIX", "no-network"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6", "network"),
    ("PrivateNetwork", "yes", "no-network"),
    ("IPAddressDeny", "any", "no-network"),
    ("SystemCallFilter", "@system-service", "always"),
    ("SystemCallFilter", "~@privileged @resources", "always"),
    ("SystemCallErrorNumber", "EPERM", "always"),
    ("SystemCallArchitectures", "native", "always"),
    ("ProtectSystem", "strict", "always"),
    ("ProtectHome", "yes", "not-home"),
    ("ProtectHome", "read-only", "home"),
    ("PrivateTmp", "yes", "always"),
    ("ProtectKernelTunables", "yes", "always"),
    ("ProtectKernelModules", "yes", "always"),
    ("ProtectKernelLogs", "yes", "always"),
    ("ProtectControlGroups", "yes", "always"),
    ("ProtectClock", "yes", "always"),
    ("ProtectHostname", "yes", "always"),
    ("ProtectProc", "invisible", "always"),
    ("ProcSubset", "pid", "always"),
    ("RestrictNamespaces", "yes", "always"),
    ("RestrictRealtime", "yes", "always"),
    ("RestrictSUIDSGID", "yes", "always"),
    ("LockPersonality", "yes", "always"),
    ("MemoryDenyWriteExecute", "yes", "always"),
    ("RemoveIPC", "yes", "always"),
    ("KeyringMode", "private", "always"),
    ("UMask", "0027", "always"),
    ("RestartPreventExitStatus", str(CONFIG_EXIT_STATUS), "always"),
    ("SyslogLevelPrefix", "yes", "always"),
)
"""What BLE needs and the hardening that does not break it. Not PrivateDevices (it
would hide /dev/rfkill), TasksMax rather than LimitNPROC (which counts every process
of the user), journald reads the ``<N>`` priority our log lines start with."""


def _applies(when: str, service: Service) -> bool:
    home = under_home(service.exec_start)
    network = service.network or service.metrics_port is not None
    return {"always": True, "no-network": not network, "network": network, "home": home,
            "not-home": not home, "notify": service.notify}[when]


def service_lines(service: Service) -> list[str]:
    """The [Service] lines both the unit and the drop-in carry."""
    lines = [f"User={service.user}"]
    lines += [f"{key}={value}" for key, value, when in HARDENING if _applies(when, service)]
    lines += [f"DeviceAllow={device}" for device in service.devices]
    lines += [f"ReadWritePaths={path}" for path in service.writable]
    lines.append(f"TasksMax={service.tasks_max}")
    if service.notify:
        lines += ["Type=notify", "NotifyAccess=main", f"WatchdogSec={service.watchdog_s}",
                  "Environment=MUSHPI_BLE_SYSTEMD_NOTIFY=true", "TimeoutStartSec=60",
                  "Restart=on-failure", "RestartSec=5"]
    return lines


BLUETOOTHD_UNIT = "bluetooth.service"
BLUETOOTHD_RESTART_S = 2


def bluetoothd_dropin_text() -> str:
    """bluetoothd started again when it crashes: Debian bookworm's unit (Raspberry Pi OS
    12) ships ``#Restart=on-failure`` commented out, so one crash left the room without
    Bluetooth until a reboot. A central can crash it from the air (README, "Against the
    real bluetoothd"); the peripheral registers again once bluetoothd is back."""
    return "\n".join([
        "# mushpi-ble setup: bluetoothd started again when it crashes (bookworm's unit leaves",
        "# Restart= commented out; a central that leaves while a GATT read or write is",
        "# pending can crash bluetoothd later). Undo with `mushpi-ble setup --remove`.",
        "[Unit]",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Restart=on-failure",
        f"RestartSec={BLUETOOTHD_RESTART_S}",
        "",
    ])


def dropin_path(unit: str) -> Path:
    return UNIT_DIR / f"{unit}.d" / DROPIN


def dropin_text(unit: str, service: Service) -> str:
    """The drop-in for the controller's own unit: BLE's needs and the hardening."""
    return "\n".join([
        f"# mushpi-ble setup: what the BLE layer of {unit} needs, and hardening that does",
        "# not break it. Undo with `mushpi-ble setup --remove`. Anything the controller",
        "# needs beyond BLE (its own devices, files) goes in a drop-in of your own sorting",
        "# after this one, e.g. 60-controller.conf with DeviceAllow=char-gpiochip rw.",
        "[Unit]",
        "After=bluetooth.service dbus.service",
        "Wants=bluetooth.service",
        "",
        "[Service]",
        *service_lines(service),
        "",
    ])


def standalone_text(service: Service, settings: Path = SETTINGS) -> str:
    """The ``serve`` unit: the real BLE service with a SIMULATED controller."""
    state = f"/var/lib/{STATE_DIRECTORY}/state.json"
    return "\n".join([
        "# mushpi-ble setup --standalone: `mushpi-ble serve`, the real BLE service with a",
        "# SIMULATED controller: phones see made-up sensor values. For trying BLE before",
        "# the MushPi controller is installed; remove with `mushpi-ble setup --remove`.",
        f"# Settings: {settings} (it must exist: a missing file stops the start).",
        "[Unit]",
        "Description=MushPi BLE stand-in with a simulated controller (made-up sensor values)",
        "After=bluetooth.service dbus.service",
        "Wants=bluetooth.service",
        "",
        "[Service]",
        *service_lines(attrs.evolve(service, notify=True)),
        f"EnvironmentFile={settings}",
        f"Environment=MUSHPI_ENV_FILE={settings}",
        f"StateDirectory={STATE_DIRECTORY}",
        f"WorkingDirectory=/var/lib/{STATE_DIRECTORY}",
        f"ExecStart={service.exec_start} --log-format json serve --state {state} --save {state}",
        "TimeoutStopSec=10",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def policy_text(user: str) -> str:
    return policy_file(user)
