"""``mushpi-ble serve``: the real MushPi service with a simulated controller.

For bench testing on a Pi (or any machine with bluetoothd): it publishes
simulated sensor readings every ``--interval`` seconds, keeps the control
targets, stage and thresholds a phone writes, and flips relays on
overrides. A live view shows centrals, subscriptions, counters, the last
values and recent writes; without a TTY (or with ``--log-format json``) it
logs plain lines instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mushpi_ble.cli import exits, view
from mushpi_ble.cli.logs import configure_logging
from mushpi_ble.cli.settings import add_env_file_argument, environment
from mushpi_ble.config import ConfigError, Settings, load_settings
from mushpi_ble.errors import StartError
from mushpi_ble.naming import advertised_name
from mushpi_ble.portal import BlePortal
from mushpi_ble.sim import SimulatedController, StateFileError
from mushpi_ble.systemd import SystemdNotifier

log = logging.getLogger("mushpi_ble.serve")



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=_interval, default=None,
                        help="seconds between simulated sensor publishes (5..300; "
                             "default MUSHPI_SIM_INTERVAL_S or 30)")
    parser.add_argument("--state", type=Path, default=None,
                        help="JSON file to start from (if it exists)")
    parser.add_argument("--save", type=Path, default=None,
                        help="JSON file to save the controller state to on exit")
    parser.add_argument("--bus", default="SYSTEM",
                        help="D-Bus bus: SYSTEM (honours DBUS_SYSTEM_BUS_ADDRESS), SESSION "
                             "or an address")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: run until signalled)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the sensor noise")
    add_env_file_argument(parser)
    parser.add_argument("--details", dest="verbose", action="store_true",
                        help="the live view also shows D-Bus paths and notify sockets")


def _interval(text: str) -> int:
    value = int(text)
    if not 5 <= value <= 300:
        raise argparse.ArgumentTypeError("--interval must be 5..300 seconds")
    return value


def render_view(portal: BlePortal, controller: SimulatedController, *, width: int = 80,
                height: int = 24, verbose: bool = False,
                log_lines: Sequence[str] = ()) -> str:
    """The live terminal view, as text (also used by tests): the running peripheral as
    ``mushpi-ble status`` shows it, the simulated controller, the last log lines."""
    relays = ", ".join(k for k, v in controller.relays.items() if v) or "none"
    tail = [f"Simulated controller: {controller.stage.get('species')} "
            f"{controller.stage.get('stage')}, relays on: {relays}"]
    if log_lines:
        tail += ["Log", *("  " + line for line in log_lines)]
    frame = view.render(portal.view_status(), width=width, height=height - len(tail),
                        verbose=verbose)
    return "\n".join(frame + [line[:width] for line in tail])


class RecentLog(logging.Handler):
    """Keeps the last few log lines for the live view: printed between frames they would
    flash and scroll the view away."""

    def __init__(self, keep: int = 3) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=keep)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                            "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record).splitlines()[0])


def _start_metrics(portal: BlePortal) -> Any:
    """The Prometheus exporter when MUSHPI_BLE_METRICS_PORT/FILE ask for one."""
    settings = portal.settings
    if settings.ble_metrics_port is None and settings.ble_metrics_file is None:
        return None
    try:
        from mushpi_ble.prometheus import exporter_for
    except ImportError as exc:
        log.error("metrics are configured but unavailable: %s", exc)
        return None
    exporter = exporter_for(portal)
    if exporter is not None:
        exporter.start()
    return exporter


def run(args: argparse.Namespace, *, settings: Settings | None = None) -> int:
    try:
        settings = settings or load_settings(environment(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return exits.CONFIG
    interval = args.interval or settings.sim_interval_s
    live = sys.stdout.isatty() and args.log_format != "json"
    configure_logging(args.log_format, args.log_level, sys.stdout)
    recent = RecentLog()
    if live:  # the view draws the last lines itself
        logging.getLogger().handlers[:] = [recent]
    problem = _save_problem(args.save)
    if problem is not None:
        print(problem, file=sys.stderr)
        return exits.USAGE
    controller = SimulatedController(seed=args.seed)
    if args.state is not None and args.state.exists():
        _load_state(controller, args.state)
    notifier = SystemdNotifier()
    portal = BlePortal(settings, bus=args.bus, systemd=notifier if notifier.enabled else None)
    portal.set_callbacks(controller.callbacks())
    controller.on_relays_changed = lambda: None  # the override write refreshes actuator status
    stop = threading.Event()
    exporter: Any = None

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal received signal=%s; stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            portal.start()
        except StartError as exc:
            print(f"cannot start: {exc}", file=sys.stderr)
            return exits.FAILED
        # the peripheral derives the same name from get_stage_data when it starts
        name = advertised_name(settings.ble_name_prefix, controller.get_stage_data())
        exporter = _start_metrics(portal)
        log.info("serving name=%s interval_s=%d", name, interval)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        next_publish = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now >= next_publish:
                reading = controller.sensor_reading()
                outcome = portal.publish_env(reading["temperature"], reading["humidity"],
                                             reading["co2"], reading["light"])
                if not live:
                    log.info("env published outcome=%s temperature=%.1f humidity=%.1f "
                             "co2=%d light=%.0f", outcome.value, reading["temperature"],
                             reading["humidity"], reading["co2"], reading["light"])
                next_publish = now + interval
            if live:
                size = shutil.get_terminal_size()
                frame = render_view(portal, controller, width=size.columns,
                                    height=size.lines - 1, verbose=args.verbose,
                                    log_lines=list(recent.lines))
                sys.stdout.write("\x1b[H\x1b[2J" + frame + "\n")
                sys.stdout.flush()
            stop.wait(1.0 if live else min(1.0, max(0.05, next_publish - time.monotonic())))
    finally:
        if exporter is not None:
            exporter.close()  # never raises: the stop and the save below must happen
        started = time.monotonic()
        portal.stop()
        log.info("stopped stop_ms=%.0f", (time.monotonic() - started) * 1000)
        saved = _save_state(controller, args.save)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exits.OK if saved else exits.FAILED


def _save_problem(path: Path | None) -> str | None:
    """Checked at start, so a state is never lost at exit to a typo in --save."""
    if path is None:
        return None
    if path.is_dir():
        return f"--save {path}: is a directory; name a file"
    parent = path.parent
    if not parent.is_dir():
        return f"--save {path}: the directory {parent} does not exist"
    if not os.access(parent, os.W_OK):
        return f"--save {path}: the directory {parent} is not writable"
    return None


def _load_state(controller: SimulatedController, path: Path) -> None:
    """A state file that cannot be used is one ERROR line; a bad regular file is kept
    aside as ``<name>.corrupt`` (so the next save does not destroy the evidence) and the
    controller starts from its defaults."""
    try:
        controller.load(path)
    except StateFileError as exc:
        aside = ""
        if path.is_file():
            corrupt = path.with_name(path.name + ".corrupt")
            try:
                os.replace(path, corrupt)
                aside = f"; kept aside as {corrupt}"
            except OSError as move:
                aside = f"; could not keep it aside: {move}"
        log.error("%s; starting from the defaults%s", exc, aside)
    else:
        log.info("state loaded path=%s", path)


def _save_state(controller: SimulatedController, path: Path | None) -> bool:
    if path is None:
        return True
    try:
        controller.save(path)
    except OSError as exc:
        log.error("state not saved path=%s error=%s", path, exc)
        return False
    log.info("state saved path=%s", path)
    return True
