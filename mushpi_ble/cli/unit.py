"""``mushpi-ble systemd-unit``: the systemd unit for this install, printed.

The unit ships inside the package so a wheel install needs nothing from the
repository; the paths are those of the interpreter running this command.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

UNIT = """\
# MushPi BLE peripheral (standalone, simulated controller). Install:
#   {exec_start_cmd} systemd-unit > /etc/systemd/system/mushpi-ble.service
#   sudo useradd --system --groups bluetooth --home /var/lib/mushpi mushpi
#   sudo mkdir -p /etc/mushpi /var/lib/mushpi && sudo chown mushpi /var/lib/mushpi
#   {exec_start_cmd} dbus-policy --user {user} > /etc/dbus-1/system.d/org.mushpi.Ble.conf
#     (lets `mushpi-ble pair` and `bonds` reach the running service)
#   sudo systemctl daemon-reload && sudo systemctl enable --now mushpi-ble
# Settings come from /etc/mushpi/ble.env (every MUSHPI_* variable; see .env.example).
# BlueZ's D-Bus policy lets members of the "bluetooth" group talk to org.bluez.
#
# Type=notify: the service says READY=1 only once its GATT application is
# registered with bluetoothd, keeps STATUS= in plain words ("serving as
# MushPi-OysterPinning, 1 phone connected", "waiting for bluetoothd") and pings
# the watchdog from its event loop: a stalled loop is restarted by systemd.

[Unit]
Description=MushPi BLE peripheral
After=bluetooth.service dbus.service
Wants=bluetooth.service

[Service]
Type=notify
NotifyAccess=main
WatchdogSec={watchdog_s}
User={user}
Group={user}
SupplementaryGroups=bluetooth
EnvironmentFile=-/etc/mushpi/ble.env
WorkingDirectory=/var/lib/mushpi
ExecStart={exec_start} --log-format json serve \
    --state /var/lib/mushpi/state.json --save /var/lib/mushpi/state.json
Restart=on-failure
RestartSec=5
TimeoutStartSec=60
# mushpi-ble stops within MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS on SIGTERM
TimeoutStopSec=10
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
ReadWritePaths=/var/lib/mushpi

[Install]
WantedBy=multi-user.target
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", default="mushpi", help="the service's user (default mushpi)")
    parser.add_argument("--watchdog-s", type=int, default=30,
                        help="WatchdogSec: systemd restarts a loop silent this long")


def exec_start() -> str:
    """The command that runs this install: its console script, else ``python -m``."""
    script = Path(sys.executable).with_name("mushpi-ble")
    if script.exists():
        return str(script)
    found = shutil.which("mushpi-ble")
    return found if found else f"{sys.executable} -m mushpi_ble.cli"


def render(*, user: str = "mushpi", watchdog_s: int = 30) -> str:
    command = exec_start()
    return UNIT.format(exec_start=command, exec_start_cmd=command, user=user,
                       watchdog_s=watchdog_s)


def run(args: argparse.Namespace) -> int:
    if args.watchdog_s < 2:
        print("--watchdog-s must be at least 2", file=sys.stderr)
        return 2
    sys.stdout.write(render(user=args.user, watchdog_s=args.watchdog_s))
    return 0
