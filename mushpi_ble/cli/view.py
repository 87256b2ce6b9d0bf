"""The live view of a running peripheral, for ``serve`` and ``mushpi-ble status``.

Pure: a status (``BlePortal.view_status()``, locally or over the management
interface) in, at most ``height`` lines of at most ``width`` characters out,
most important first — the headline systemd also shows, then the adapter and
advert, who may steer the room, the phones, the readings, recent writes and
problems. Plain words by default; ``verbose`` adds D-Bus paths and counters.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Mapping
from typing import Any

from mushpi_ble.headline import adapter_name, status_text
from mushpi_ble.protocol import ActuatorStatus, EnvMeasurement, StatusFlag, StatusFlags

Status = Mapping[str, Any]

PROBLEM_LINES = 6
"""At most this many lines of one problem's advice (the frame's height bounds them all)."""
SHORT_NAMES = {"env_measurements": "env", "status_flags": "status",
               "actuator_status": "relays"}


def render(status: Status, *, width: int = 80, height: int = 24, verbose: bool = False,
           now: float | None = None) -> list[str]:
    """The frame: every line fits ``width``, the frame fits ``height``."""
    clock = time.time() if now is None else now
    head = [_clip(f"MushPi BLE · {status_text(status)}", width - 9) + " "
            + time.strftime("%H:%M:%S", time.localtime(clock))]
    body: list[str] = []
    for section in (_health, _access, _phones, _readings, _writes, _problems):
        body.extend(section(status, verbose, width))
    if verbose:
        body.extend(_details(status))
    lines = [_clip(line, width) for line in head + body]
    if len(lines) > height:
        more = len(lines) - height + 1
        lines = [*lines[:height - 1], f"… {more} more lines (a taller terminal shows them)"]
    return lines


def _health(status: Status, verbose: bool, _width: int) -> list[str]:
    if not status.get("registered"):
        return []
    instances = status.get("advert_instances") or {}
    advert = str(status.get("advert_state", "-"))
    if instances.get("active") is not None and instances.get("available") is not None:
        advert += f" ({instances['active']} of {instances['active'] + instances['available']}" \
                  " slots)"
    line = (f"Adapter {adapter_name(status)} {status.get('adapter_state', '?')}, "
            f"rfkill {status.get('rfkill', '?')} · advert {advert}")
    restarts = status.get("restarts") or 0
    if restarts:
        line += f" · bluetoothd restarts survived: {restarts}"
    return [line]


def _access(status: Status, _verbose: bool, _width: int) -> list[str]:
    access = status.get("access")
    if not access:
        return []
    window = "closed"
    if access.get("window_open") and access.get("window_until") is not None:
        window = "OPEN until " + time.strftime("%H:%M:%S",
                                               time.localtime(access["window_until"]))
    line = (f"Access: write {access['write']}, read {access['read']} · pairing window "
            f"{window}")
    lines = [line]
    refused = (access.get("refused_writes") or 0, access.get("refused_reads") or 0)
    if any(refused):
        lines.append(f"  refused {refused[0]} writes, {refused[1]} reads of phones "
                     "without an approved bond")
    unapproved = access.get("unapproved") or []
    if unapproved:
        lines.append(f"  NOT APPROVED bonds ({len(unapproved)}): {', '.join(unapproved[:3])}"
                     + (" …" if len(unapproved) > 3 else "")
                     + " (mushpi-ble bonds --approve if yours, --remove if not)")
    pairing = status.get("pairing") or {}
    passkey = pairing.get("passkey")
    if passkey:
        lines.append(f"  PASSKEY {passkey['passkey']} for {passkey['address']}: "
                     "type it on the phone")
    if pairing:
        lines.extend(_pairing(pairing))
    return lines


def _pairing(pairing: Status) -> list[str]:
    agent = ("no agent" if pairing.get("mode") == "off"
             else "agent registered" if pairing.get("agent_registered")
             else "agent NOT registered")
    bonded = pairing.get("bonded_devices") or []
    names = ", ".join(d["address"] + (" connected" if d.get("connected") else "")
                      for d in bonded[:3]) + (" …" if len(bonded) > 3 else "")
    lines = [f"Pairing: {pairing.get('mode')}, {agent} · {len(bonded)} bonded"
             + (f": {names}" if bonded else "")]
    recent = pairing.get("recent") or []
    if recent:
        last = recent[-1]
        when = time.strftime("%H:%M:%S", time.localtime(last["at"]))
        lines.append(f"  last request {when} {last['request']} from "
                     f"{last['address'] or '?'}: {last['outcome']}")
    return lines


def _phones(status: Status, verbose: bool, _width: int) -> list[str]:
    phones = [d for d in status.get("connected_devices") or [] if d.get("connected")]
    if not status.get("registered"):
        return []
    lines = [f"Phones ({len(phones)})" if phones else "Phones: none connected"]
    sockets = (status.get("notify") or {}).get("phones") or {}
    for phone in phones:
        since = (time.strftime("%H:%M", time.localtime(phone["connected_at"]))
                 if phone.get("connected_at") else "?")
        subscribed = (sockets.get(phone["path"]) or {}).get("characteristics") or []
        line = f"  {phone.get('address') or '?'}  MTU {phone.get('mtu')}  since {since}"
        if subscribed:
            line += "  gets " + ", ".join(SHORT_NAMES.get(n, n) for n in subscribed)
        if verbose:
            line += f"  {phone['path']}"
        lines.append(line)
    return lines


def _readings(status: Status, verbose: bool, _width: int) -> list[str]:
    values = status.get("values") or {}
    counters = status.get("characteristics") or {}
    if not counters:
        return []
    lines = ["Last sent"]
    for name, c in counters.items():
        value = bytes.fromhex(values.get(name, ""))
        line = f"  {SHORT_NAMES.get(name, name):7} {describe(name, value):44}"
        line += f" sent {c['sent']}"
        if c.get("dropped"):
            line += f", dropped {c['dropped']}"
        if c.get("invalid"):
            line += f", refused {c['invalid']}"
        lines.append(line)
    return lines


def describe(name: str, value: bytes) -> str:
    """A characteristic's value in words; a value that does not decode, in hex."""
    decoders: dict[str, Callable[[bytes], str]] = {
        "env_measurements": _env, "status_flags": _flags, "actuator_status": _relays}
    decoder = decoders.get(name)
    if not value:
        return "nothing yet"
    try:
        return decoder(value) if decoder is not None else value.hex()
    except ValueError:
        return value.hex()


def _env(value: bytes) -> str:
    env = EnvMeasurement.unpack(value)
    return (f"{env.temperature:.1f} °C  {env.humidity:.1f} %RH  {env.co2} ppm  "
            f"light {env.light}")


def _flags(value: bytes) -> str:
    flags = StatusFlags.unpack(value).flags
    names = [f.name.lower().replace("_", " ") for f in StatusFlag
             if f.name and flags & f]
    return ", ".join(names) or "no flags"


def _relays(value: bytes) -> str:
    act = ActuatorStatus.unpack(value)
    return " · ".join(f"{relay} {'on' if getattr(act, relay) else 'off'}"
                      for relay in ("light", "fan", "mist", "heater"))


def _writes(status: Status, verbose: bool, _width: int) -> list[str]:
    writes = status.get("recent_writes") or []
    if not writes:
        return []
    lines = ["Recent writes"]
    for w in writes[-4:]:
        when = time.strftime("%H:%M:%S", time.localtime(w["at"]))
        mark = "ok" if w["accepted"] else "REFUSED"
        who = w.get("device", "").rsplit("/", 1)[-1].removeprefix("dev_").replace("_", ":")
        detail = w["detail"] if verbose or not w["accepted"] else ""
        lines.append(f"  {when} {mark:7} {w['characteristic'].replace('_', ' '):17} "
                     f"{who} {detail}".rstrip())
    return lines


def _problems(status: Status, _verbose: bool, width: int) -> list[str]:
    problems = []
    if status.get("advert_problem"):
        problems.append(f"alias only: {status['advert_problem']}")
    pairing = status.get("pairing") or {}
    if pairing.get("mode") not in (None, "off") and not pairing.get("agent_registered") \
            and status.get("registered"):
        problems.append(f"pairing agent not registered: {pairing.get('agent_error') or '-'}")
    error = status.get("last_error")
    if error and status.get("registered") and not (
            status.get("advert_problem") and error.startswith("advertisement:")):
        problems.append(f"last error: {error}")
    lines: list[str] = []
    for problem in problems[:2]:
        wrapped = textwrap.wrap(problem, width - 4)
        lines.extend(["  " + part for part in wrapped[:PROBLEM_LINES]])
    return ["Problems", *lines] if lines else []


def _details(status: Status) -> list[str]:
    lines = [f"bluetoothd {status.get('bluez_owner') or '-'} · state {status.get('state')} · "
             f"adapter {status.get('adapter')} · connects {status.get('connects')} "
             f"disconnects {status.get('disconnects')}"]
    if status.get("notify"):
        lines.extend(notify_lines(status["notify"]))
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


def _clip(line: str, width: int) -> str:
    return line if len(line) <= width else line[:width - 1] + "…"
