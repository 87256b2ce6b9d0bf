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
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from mushpi_ble.config import ConfigError, Settings, load_settings
from mushpi_ble.errors import StartError
from mushpi_ble.naming import advertised_name
from mushpi_ble.portal import BlePortal
from mushpi_ble.protocol import ActuatorStatus, EnvMeasurement, StatusFlags
from mushpi_ble.sim import SimulatedController
from mushpi_ble.systemd import SystemdNotifier

log = logging.getLogger("mushpi_ble.serve")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_START = 3


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


def _interval(text: str) -> int:
    value = int(text)
    if not 5 <= value <= 300:
        raise argparse.ArgumentTypeError("--interval must be 5..300 seconds")
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"ts": round(record.created, 3), "level": record.levelname,
                           "logger": record.name, "msg": record.getMessage()})


def configure_logging(fmt: str, level: str, stream: TextIO) -> None:
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def render_view(portal: BlePortal, controller: SimulatedController) -> str:
    """The live terminal view, as text (also used by tests)."""
    status = portal.get_status()
    app = portal.peripheral.steps.application.app
    lines = [
        f"MushPi BLE  {status['advertised_name'] or '-'}  adapter={status['adapter']}  "
        f"registered={status['registered']}  advertising={status['advertising']}  "
        f"restarts={status['restarts']}",
        *health_lines(status),
        "",
        f"centrals ({status['connection_count']}):",
    ]
    for dev in status["connected_devices"]:
        if dev["connected"]:
            lines.append(f"  {dev['address'] or dev['path']}  mtu={dev['mtu']}")
    lines.append("")
    lines.append("characteristic       subscribed offered  sent  dropped coalesced pending "
                 "p50ms  last value")
    for name, c in status["characteristics"].items():
        value = app.state(name).value if app is not None else b""
        lines.append(
            f"{name:20} {status['subscriptions'].get(name, False)!s:10} {c['offered']:7} "
            f"{c['sent']:5} {c['dropped']:8} {c['coalesced']:9} {c['pending']:7} "
            f"{c['latency']['p50_s'] * 1000:5.2f}  {_decode(name, value)}"
        )
    if "notify" in status:
        lines.append("")
        lines.extend(notify_lines(status["notify"]))
    lines.append("")
    lines.append("recent writes:")
    for event in list(portal.service.recent_writes)[-8:]:
        mark = "ok " if event.accepted else "REJ"
        when = time.strftime("%H:%M:%S", time.localtime(event.at))
        lines.append(f"  {when} {mark} {event.characteristic:17} {event.detail}")
    if "pairing" in status:
        lines.append("")
        lines.extend(pairing_lines(status["pairing"]))
    if "access" in status:
        lines.extend(access_lines(status["access"], status["pairing"]))
    relays = ", ".join(k for k, v in controller.relays.items() if v) or "none"
    lines.append("")
    lines.append(f"relays on: {relays}   stage: {controller.stage.get('species')} "
                 f"{controller.stage.get('stage')}")
    return "\n".join(lines)


def health_lines(status: dict[str, Any]) -> list[str]:
    """The adapter and the advert in plain words: state, what was done, what is wrong."""
    instances = status.get("advert_instances") or {}
    lines = [
        f"adapter: {status.get('adapter_state', 'unknown')}  rfkill={status.get('rfkill')}  "
        f"recovery={'on' if status.get('adapter_recovery') else 'off (report only)'}  "
        f"steps={sum((status.get('recovery_totals') or {}).values())}",
        f"advert: {status.get('advert_state', '-')}  instances active="
        f"{instances.get('active', '?')} free={instances.get('available', '?')}  "
        f"refusals={status.get('advert_refusals', 0)}  drops={status.get('advert_drops', 0)}",
    ]
    recoveries = status.get("recoveries") or []
    if recoveries:
        last = recoveries[-1]
        when = time.strftime("%H:%M:%S", time.localtime(last["at"]))
        lines.append(f"  last adapter step {when}: {last['action']} {last['result']}: "
                     f"{last['detail']}")
    if status.get("advert_problem"):
        lines.append(f"  ALIAS-ONLY: {status['advert_problem']}")
    return lines


def notify_lines(notify: dict[str, Any]) -> list[str]:
    """How notifications leave: the path per characteristic, then each phone's sockets."""
    paths = "  ".join(f"{name}={c['path']}" + (f" (losses {c['socket_losses']})"
                                                if c["socket_losses"] else "")
                      for name, c in notify["characteristics"].items())
    lines = [f"notify: mode={notify['mode']}  {paths}"]
    for device, p in notify["phones"].items():
        lines.append(
            f"  {device.rsplit('/', 1)[-1]}  mtu={p['mtu']} queue={p['queue_depth']} "
            f"sent={p['sent']} dropped={p['dropped']} coalesced={p['coalesced']} "
            f"refused={p['refused']}  {','.join(p['characteristics'])}"
            + (f"  last error: {p['last_error']}" if p["last_error"] else ""))
    return lines


def pairing_lines(pairing: dict[str, Any]) -> list[str]:
    """The pairing part of the live view: agent, counters, bonds, recent attempts."""
    agent = ("none (MUSHPI_BLE_PAIRING=off)" if pairing["mode"] == "off"
             else "registered" if pairing["agent_registered"]
             else f"NOT registered ({pairing.get('agent_error') or 'not yet'})")
    counts = "  ".join(f"{key}={pairing[key]}" for key in
                       ("requests", "accepted", "rejected", "canceled", "paired", "failed"))
    bonded = pairing["bonded_devices"]
    lines = [f"pairing: {pairing['mode']}  agent {agent}", f"  {counts}",
             f"  bonded ({len(bonded)}): " + (", ".join(
                 d["address"] + (" connected" if d["connected"] else "") for d in bonded)
                 or "none")]
    for attempt in pairing["recent"][-4:]:
        when = time.strftime("%H:%M:%S", time.localtime(attempt["at"]))
        lines.append(f"  {when} {attempt['request']:20} {attempt['address'] or '-':17} "
                     f"{attempt['outcome']}")
    return lines


def access_lines(access: dict[str, Any], pairing: dict[str, Any]) -> list[str]:
    """Who may steer the room: the modes, the window, refusals, a passkey to type."""
    window = "closed"
    if access["window_open"] and access["window_until"] is not None:
        window = "OPEN until " + time.strftime("%H:%M:%S",
                                               time.localtime(access["window_until"]))
    refused = "  ".join(f"{reason}={count}" for reason, count in access["refused"].items())
    lines = [f"access: write={access['write']} read={access['read']}  pairing window {window}"
             f"  bonded={access['bonded_count']}",
             f"  refused reads={access['refused_reads']} writes={access['refused_writes']}"
             f" ({refused})"]
    unapproved = access.get("unapproved") or []
    if unapproved:
        lines.append(f"  NOT APPROVED bonds ({len(unapproved)}): {', '.join(unapproved)}"
                     " (mushpi-ble bonds --approve if yours, --remove if not)")
    passkey = pairing.get("passkey")
    if passkey:
        lines.append(f"  PASSKEY {passkey['passkey']} for {passkey['address']}: type it on "
                     "the phone")
    return lines


def _decode(name: str, value: bytes) -> str:
    try:
        if name == "env_measurements":
            env = EnvMeasurement.unpack(value)
            return (f"{env.temperature:.1f}°C {env.humidity:.1f}% {env.co2}ppm "
                    f"light={env.light}")
        if name == "status_flags":
            return f"flags=0x{StatusFlags.unpack(value).flags:04x}"
        if name == "actuator_status":
            act = ActuatorStatus.unpack(value)
            return f"relays=0x{act.relay_bits:02x}"
    except ValueError:
        pass
    return value.hex()


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
        settings = settings or load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    interval = args.interval or settings.sim_interval_s
    live = sys.stdout.isatty() and args.log_format != "json"
    configure_logging(args.log_format, args.log_level, sys.stderr if live else sys.stdout)
    controller = SimulatedController(seed=args.seed)
    if args.state is not None and args.state.exists():
        controller.load(args.state)
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
            return EXIT_START
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
                sys.stdout.write("\x1b[H\x1b[2J" + render_view(portal, controller) + "\n")
                sys.stdout.flush()
            stop.wait(1.0 if live else min(1.0, max(0.05, next_publish - time.monotonic())))
    finally:
        if exporter is not None:
            exporter.close()
        started = time.monotonic()
        portal.stop()
        log.info("stopped stop_ms=%.0f", (time.monotonic() - started) * 1000)
        if args.save is not None:
            controller.save(args.save)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK
