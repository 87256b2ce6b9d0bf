"""An app's whole visit, many times over: the peripheral starts, a phone finds it,
connects afresh, discovers, subscribes, gets notifications and leaves, the
peripheral stops — and bluetoothd must come through every cycle alive.

What a central that is not our lab's (a phone app on bleak) does, step by step
(issue 29): our peripheral (BlePortal, every setting at its default, on hci0)
starts; the central (hci1) scans until it sees our advert by the MushPi service
UUID, forgets our address (``Adapter1.RemoveDevice``), connects by address
(``Adapter1.ConnectDevice``, LE public), waits for ``ServicesResolved`` and
checks that what it resolved holds the GATT service (0x1801) and the MushPi
service, not just GAP (0x1800); bleak subscribes by AcquireNotify (asked for:
bleak 3.1's default is StartNotify), receives a few notifications and
disconnects; the peripheral stops.
After the disconnect and after the stop, bluetoothd must still be the process
the cycle began with.

Two defects of the CENTRAL's half of the lab's one bluetoothd (a phone is not
BlueZ) are kept out of the verdict, each with its evidence in the variants:
bluetoothd < 5.86 crashes when the central's D-Bus client leaves before its
notify socket's hangup is handled (``Variant.central_leaves``: the central
here lets the socket close first), and a ``ServicesResolved`` that overtakes
the ``InterfacesAdded`` of the resolved services is counted, not failed
(``Cycles.late_announcements``).

bluetoothd runs here with its own defaults for ATT (no ``[GATT]`` section:
EATT on 5.66, off on 5.82), LE only like every configuration of the lab, and
is started afresh for this module; the lab's portal is stopped meanwhile.

A failing cycle does not end the run: it is recorded with where its evidence
is (bluetoothd's log and btmon byte ranges, a core file, the kernel's segfault
line), bluetoothd is started again if it died, and the test fails at the end
with every failure listed — so one run says how often, not only whether.

Environment (passed into the guest by scripts/vm/lane):
  MUSHPI_VM_CYCLES           cycles per variant (default 15: CI's budget)
  MUSHPI_VM_CYCLE_VARIANTS   which variants, space-separated (default "default"):
      default      every setting at its default (notify sockets, the advert
                   registered again at each connect)
      signal       MUSHPI_BLE_NOTIFY_MODE=signal (PropertiesChanged only)
      no-readvert  the advert is not registered again when a phone connects
      static       both: nothing of ours changes after the phone connects
      mtu185       bluetoothd with ``[GATT] ExchangeMTU = 185``
      monitored    default, with the system bus recorded (dbus-monitor-*.txt)
      central-at-once, mtu185-at-once
                   the central's bleak closes its D-Bus connection at once on
                   disconnect (``Variant.central_leaves``): bluetoothd < 5.86
                   crashes in its central half
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CENTRAL_ADAPTER,
    GENERAL,
    JOB,
    PERIPHERAL_ADAPTER,
    PORTAL_STAGE,
    Bluetoothd,
    LoopThread,
    Metrics,
    PortalLab,
    SystemBus,
    btmon_offset,
    connect_device,
    device_path,
    device_prop,
    forget_bond,
    wait_for,
)
from hub import Hub, HubScanner, device_at
from jeepney import HeaderFields, MatchRule, Message, message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import DBusErrorResponse

from mushpi_ble.protocol import SERVICE_UUID, EnvMeasurement

log = logging.getLogger("tests_vm.cycles")

DEFAULT_CYCLES = 15
CYCLES = int(os.environ.get("MUSHPI_VM_CYCLES") or DEFAULT_CYCLES)
GAP, GATT = "00001800-0000-1000-8000-00805f9b34fb", "00001801-0000-1000-8000-00805f9b34fb"
ENV = "env_measurements"
NOTIFICATIONS = 3
SCAN_ROUND_S = 1.5  # one scan edge (test_60_unattended.discover_by_uuid says why)
SCAN_TIMEOUT_S = 45.0


@dataclass(frozen=True)
class Variant:
    """What one series of cycles changes from every-setting-at-its-default."""

    env: dict[str, str] = field(default_factory=dict)
    gatt: str = ""
    """``[GATT]`` lines of bluetoothd's configuration (none: its defaults)."""
    readvert_at_connect: bool = True
    monitor: bool = False
    """Record the system bus (``dbus-monitor``) into the job folder meanwhile."""
    central_leaves: str = "socket-first"
    """How the central leaves. "socket-first": the link goes down
    (``Device1.Disconnect``), bluetoothd closes the central's notify socket
    (its ``NotifyAcquired`` turns false), then bleak closes its D-Bus
    connection. "at-once": ``BleakClient.disconnect()`` alone, which closes
    bleak's D-Bus connection as soon as ``Connected`` turns false. bluetoothd
    before 5.86, as the CENTRAL, frees its AcquireNotify client when that
    D-Bus connection leaves and then uses it when the socket's hangup comes
    after it (src/gatt-client.c notify_io_destroy; fixed by "gatt-client:
    prevent use-after-free when clients disconnect"): SIGSEGV. That is the
    central's half of the one bluetoothd of the lab; a phone is not BlueZ."""


VARIANTS: dict[str, Variant] = {
    "default": Variant(),
    "signal": Variant(env={"MUSHPI_BLE_NOTIFY_MODE": "signal"}),
    "no-readvert": Variant(readvert_at_connect=False),
    "static": Variant(env={"MUSHPI_BLE_NOTIFY_MODE": "signal"}, readvert_at_connect=False),
    "mtu185": Variant(gatt="ExchangeMTU = 185\n"),
    "monitored": Variant(monitor=True),
    "central-at-once": Variant(central_leaves="at-once"),
    "mtu185-at-once": Variant(gatt="ExchangeMTU = 185\n", central_leaves="at-once"),
}


def selected_variants(value: str | None) -> list[str]:
    names = (value or "default").replace(",", " ").split()
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise pytest.UsageError(f"MUSHPI_VM_CYCLE_VARIANTS: unknown {unknown}; "
                                f"known: {list(VARIANTS)}")
    return names


SELECTED = selected_variants(os.environ.get("MUSHPI_VM_CYCLE_VARIANTS"))


def bluetoothd_config(variant: Variant) -> str:
    return GENERAL + (f"\n[GATT]\n{variant.gatt}" if variant.gatt else "")


# -- evidence -----------------------------------------------------------------------------
class CycleFailed(Exception):
    """One cycle went wrong; ``kind`` groups the failures in the summary."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass
class Marks:
    """Where one cycle's evidence starts in the logs."""

    log_path: Path
    log_offset: int
    btmon_offset: int

    def describe(self, bluetoothd: Bluetoothd) -> str:
        end = bluetoothd.log_offset() if bluetoothd.log_path == self.log_path else "end"
        return (f"{self.log_path.name} bytes {self.log_offset}..{end}, "
                f"btmon.txt bytes {self.btmon_offset}..{btmon_offset()}")


def segfault_lines() -> list[str]:
    """The kernel's lines about a crashed bluetoothd, if any."""
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in out.splitlines() if "bluetoothd" in line
            and ("segfault" in line or "trap" in line or "general protection" in line)]


def cores() -> list[str]:
    return sorted(p.name for p in JOB.glob("core.*"))


# -- the cycle ----------------------------------------------------------------------------
@dataclass
class Cycles:
    """One series: the daemon, its configuration, the results."""

    name: str
    variant: Variant
    bus: SystemBus
    bluetoothd: Bluetoothd
    controller: Any
    failures: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)
    crashes: int = 0
    late_announcements: int = 0
    """Cycles in which the central's bluetoothd sent ``ServicesResolved: true`` before
    the ``InterfacesAdded`` of the services it resolved. BlueZ's D-Bus layer
    (gdbus) queues both and flushes every queued object, in the order each was
    first queued, whenever bluetoothd sends any other message: the device is
    queued first (its ``UUIDs`` change in ``gatt_client_ready_cb``), its
    services after it, so a method call answered in that moment (any client's:
    in the lab, our peripheral's calls into the same bluetoothd after a
    connect) sends the device's change first. A central that builds its
    services from the signals at ``ServicesResolved`` (bleak 3.1's manager)
    then misses some or all. It is the central's BlueZ; a phone is not BlueZ.
    Counted, not failed: the cycle checks what bluetoothd holds once resolved."""
    pid: int | None = None
    owner: str | None = None

    @property
    def mode(self) -> str:
        return f"cycles-{self.name}"

    def start_daemon(self) -> None:
        self.bluetoothd.stop()
        self.bluetoothd.start(self.mode, bluetoothd_config(self.variant))
        self.pid = self.bluetoothd.pid
        self.owner = self.bus.bluez_owner()

    def alive(self, when: str) -> None:
        """bluetoothd is the one this cycle began with, and it answers."""
        status = self.bluetoothd.exited()
        owner = self.bus.bluez_owner()
        if status is None and owner == self.owner:
            try:
                self.bus.get(f"/org/bluez/{PERIPHERAL_ADAPTER}", "org.bluez.Adapter1", "Powered")
                return
            except (DBusErrorResponse, TimeoutError) as exc:
                detail = f"bluetoothd (pid {self.pid}) did not answer: {exc}"
        else:
            detail = (f"bluetoothd (pid {self.pid}) ended {status} (negative: the signal); "
                      f"org.bluez owner {self.owner} -> {owner}")
        self.crashes += 1
        raise CycleFailed(f"bluetoothd died {when}",
                          f"{detail}; kernel: {segfault_lines()[-2:]}; cores: {cores()}")

    def run(self, index: int) -> None:
        marks = Marks(self.bluetoothd.log_path, self.bluetoothd.log_offset(), btmon_offset())
        started = time.monotonic()
        try:
            self.cycle(index)
        except CycleFailed as exc:
            where = marks.describe(self.bluetoothd)
            self.kinds[exc.kind] = self.kinds.get(exc.kind, 0) + 1
            self.failures.append(f"cycle {index}: {exc} [{where}]")
            log.error("cycle failed variant=%s cycle=%d %s [%s]", self.name, index, exc, where)
            if self.bluetoothd.exited() is not None or self.bus.bluez_owner() != self.owner:
                self.start_daemon()  # the next cycles need one
        took = time.monotonic() - started
        self.durations.append(took)
        log.info("cycle done variant=%s cycle=%d took_s=%.1f", self.name, index, took)

    def cycle(self, index: int) -> None:
        from mushpi_ble.config import load_settings
        from mushpi_ble.portal import BlePortal

        self.alive("before the cycle")
        settings = load_settings(environ={"MUSHPI_BLE_ADAPTER": PERIPHERAL_ADAPTER,
                                          **self.variant.env}, env_file=None)
        portal = BlePortal(settings)
        portal.set_callbacks(self.controller.callbacks())
        stopped = False
        try:
            portal.start()
            portal.update_advertising_name()
            reading = self.controller.sensor_reading()
            portal.publish_env(reading["temperature"], reading["humidity"], reading["co2"],
                               reading["light"])
            address = self.bus.adapter_address(PERIPHERAL_ADAPTER)
            with LoopThread(f"cycle-{index}") as loop:
                self.visit(loop, portal, address, index)
            try:
                portal.wait_for_status(lambda st: st["connection_count"] == 0, 20)
            except TimeoutError:
                raise CycleFailed("leave unseen", "the peripheral still counts the phone "
                                  "20 s after its disconnect") from None
            self.alive("after the phone's disconnect")
            stopped = True
            portal.stop()
            self.alive("after the peripheral stopped")
        finally:
            if not stopped:
                portal.stop()

    def visit(self, loop: LoopThread, portal: Any, address: str, index: int) -> None:
        """The phone's part: scan, forget, connect, discover, subscribe, receive, leave."""
        scan(self.bus, loop, address)
        forget_bond(self.bus, CENTRAL_ADAPTER, address)  # Adapter1.RemoveDevice
        path = device_path(address)
        hub = Hub(device_at(path, address))
        announced: list[str] | None = None
        try:
            with SignalView(path) as view:
                try:
                    connect_device(self.bus, address)  # Adapter1.ConnectDevice, LE public
                except DBusErrorResponse as exc:
                    raise CycleFailed("connect failed", str(exc)) from None
                with contextlib.suppress(TimeoutError):
                    announced = view.services_when_resolved(40)
            if announced is None:
                raise CycleFailed("not resolved", "no ServicesResolved within 40 s")
            services = resolved_services(self.bus, path)
            log.info("resolved cycle=%d uuids=%s objects=%s announced_before=%s", index,
                     services["uuids"], services["objects"], announced)
            if GATT not in services["uuids"] or SERVICE_UUID not in services["uuids"] \
                    or SERVICE_UUID not in services["objects"]:
                raise CycleFailed("services missing", f"resolved {services}")
            if sorted(announced) != services["objects"]:
                # The central's bluetoothd, not ours (see late_announcements): counted.
                self.late_announcements += 1
                log.warning("services announced after ServicesResolved cycle=%d: a central "
                            "following the signals knew %s, then %s", index, sorted(announced),
                            services["objects"])
            loop.run(hub.connect(), 60)
            # AcquireNotify, as apps do that ask bleak for it (its default is StartNotify)
            loop.run(hub.subscribe(ENV, acquire=True), 30)
            if not hub.client._backend._notification_fds:  # type: ignore[attr-defined]
                raise CycleFailed("not acquired", "bleak subscribed without AcquireNotify")
            receive(loop, hub, portal, index)
        finally:
            self.leave(loop, hub, path)

    def leave(self, loop: LoopThread, hub: Hub, path: str) -> None:
        """The phone disconnects; bleak's D-Bus connection goes once bluetoothd has
        closed the central's notify socket (``central_leaves`` says why)."""
        if self.variant.central_leaves == "at-once":
            with contextlib.suppress(Exception):
                loop.run(hub.disconnect(), 30)
        with contextlib.suppress(DBusErrorResponse, TimeoutError):
            if device_prop(self.bus, path, "Connected"):
                self.bus.call(path, "org.bluez.Device1", "Disconnect", timeout=15)
        wait_for(lambda: not device_prop(self.bus, path, "Connected"), 20,
                 f"{path} disconnected")
        for char in hub.chars.values():
            wait_for(partial(_released, self.bus, char.obj[0]), 20,
                     f"the central's notify socket on {char.obj[0]} closed")
        with contextlib.suppress(Exception):
            loop.run(hub.disconnect(), 30)


def scan(bus: SystemBus, loop: LoopThread, address: str) -> None:
    """Scan by the MushPi service UUID until our advert shows, in short rounds."""
    deadline = time.monotonic() + SCAN_TIMEOUT_S
    rounds = 0
    while True:
        forget_bond(bus, CENTRAL_ADAPTER, address)
        scanner = HubScanner(CENTRAL_ADAPTER)
        rounds += 1
        loop.run(scanner.start(), 20)
        try:
            sighting = loop.run(scanner.wait(address, SCAN_ROUND_S), SCAN_ROUND_S + 10)
            if SERVICE_UUID in sighting.uuids:
                return
        except TimeoutError:
            pass
        finally:
            loop.run(scanner.stop(), 20)
        if time.monotonic() >= deadline:
            raise CycleFailed("not found", f"no advert with the MushPi service UUID from "
                              f"{address} in {rounds} scans")


def receive(loop: LoopThread, hub: Hub, portal: Any, index: int) -> None:
    """The subscription reached the peripheral; a few published values reach the phone."""
    def subscribed(status: dict[str, Any]) -> bool:
        return bool(status["subscriptions"].get(ENV) or status["notify"]["phones"])

    try:
        portal.wait_for_status(subscribed, 20)
    except TimeoutError:
        raise CycleFailed("subscription unseen", "the peripheral saw no subscription "
                          f"within 20 s: {portal.get_status()['notify']}") from None
    hub.drain(ENV)
    for i in range(NOTIFICATIONS):
        co2 = 5000 + 10 * (index % 100) + i
        portal.publish_env(19.5, 90.0, co2, 2.0)
        deadline = time.monotonic() + 15
        while True:
            remaining = deadline - time.monotonic()
            try:
                _, value = loop.run(hub.next_value(ENV, max(0.1, remaining)), remaining + 5)
            except TimeoutError:
                raise CycleFailed("notification lost",
                                  f"co2={co2} not received; notify status "
                                  f"{portal.get_status()['notify']}") from None
            if EnvMeasurement.unpack(value).co2 == co2:
                break


class SignalView:
    """What a central that follows bluetoothd's signals (as bleak's manager and
    plain D-Bus apps do) knows: the ``GattService1`` objects announced by
    ``InterfacesAdded`` under a device before its ``ServicesResolved`` turned true."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: DBusConnection = open_dbus_connection(bus="SYSTEM")
        self.queue: deque[Message] = deque()
        wanted: tuple[dict[str, str], ...] = (
            {"interface": "org.freedesktop.DBus.ObjectManager", "member": "InterfacesAdded"},
            {"interface": "org.freedesktop.DBus.Properties", "member": "PropertiesChanged",
             "path": path},
        )
        # Filtered here without the sender: messages carry bluetoothd's unique name.
        self.filters = [self.conn.filter(MatchRule(type="signal", **w), queue=self.queue)
                        for w in wanted]
        for w in wanted:
            rule = MatchRule(type="signal", sender="org.bluez", **w)
            self.conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=5)

    def services_when_resolved(self, timeout: float) -> list[str]:
        """The service UUIDs announced before ``ServicesResolved`` became true."""
        deadline = time.monotonic() + timeout
        announced: list[str] = []
        while True:
            msg = self.conn.recv_until_filtered(
                self.queue, timeout=max(0.0, deadline - time.monotonic()))
            member = msg.header.fields.get(HeaderFields.member)
            if member == "InterfacesAdded":
                obj, ifaces = msg.body
                service = ifaces.get("org.bluez.GattService1")
                if obj.startswith(self.path + "/") and service is not None:
                    announced.append(str(service["UUID"][1]))
            elif msg.body[0] == "org.bluez.Device1":
                resolved = msg.body[1].get("ServicesResolved")
                if resolved is not None and resolved[1]:
                    return announced

    def __enter__(self) -> SignalView:
        return self

    def __exit__(self, *_exc: object) -> None:
        for handle in self.filters:
            handle.close()
        self.conn.close()


def resolved_services(bus: SystemBus, path: str) -> dict[str, list[str]]:
    """What the central resolved: ``Device1.UUIDs`` and its ``GattService1`` objects."""
    (objects,) = bus.call("/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects",
                          timeout=10)
    device = objects.get(path, {}).get("org.bluez.Device1", {})
    uuids = sorted(str(u) for u in device.get("UUIDs", ("as", []))[1])
    services = sorted(str(ifaces["org.bluez.GattService1"]["UUID"][1])
                      for p, ifaces in objects.items()
                      if p.startswith(path + "/") and "org.bluez.GattService1" in ifaces)
    return {"uuids": uuids, "objects": services}



def _released(bus: SystemBus, char_path: str) -> bool:
    return not _char_prop(bus, char_path, "NotifyAcquired")


def _char_prop(bus: SystemBus, path: str, prop: str) -> bool:
    try:
        return bool(bus.get(path, "org.bluez.GattCharacteristic1", prop))
    except (DBusErrorResponse, TimeoutError):
        return False


# -- variants -----------------------------------------------------------------------------
@contextlib.contextmanager
def advert_kept_at_connect() -> Iterator[list[int]]:
    """The peripheral does not register its advert again when a phone connects (an
    investigation aid). Yields a counter of the suppressed re-registrations: a
    variant that suppressed none tested nothing."""
    import attrs

    from mushpi_ble.session import advert_duty

    original = advert_duty.decide
    suppressed = [0]

    def decide(facts: advert_duty.AdvertFacts,
               event: advert_duty.AdvertEvent) -> advert_duty.Duty:
        duty = original(facts, event)
        if isinstance(event, advert_duty.CentralCame) and duty.register_again is not None:
            suppressed[0] += 1
            return attrs.evolve(duty, register_again=None)
        return duty

    advert_duty.decide = decide
    try:
        yield suppressed
    finally:
        advert_duty.decide = original


@contextlib.contextmanager
def bus_recorded(path: Path) -> Iterator[None]:
    """Every message on the system bus, in order, with timestamps (root may monitor)."""
    with path.open("wb") as out:
        proc = subprocess.Popen(["dbus-monitor", "--system"], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def lab_portal_set_aside(lab: PortalLab, bluetoothd: Bluetoothd, bluez: str) -> Iterator[None]:
    """The lab's portal stopped while the cycles run; afterwards bluetoothd in the
    pass's own configuration and the lab's portal registered again."""
    lab.portal.stop()
    try:
        yield
    finally:
        bluetoothd.stop()
        bluetoothd.start(bluez)
        lab.portal.start()

        def ready() -> bool:
            status = lab.status()
            return bool(status["registered"] and status["pairing"]["agent_registered"])

        wait_for(ready, 30, "the lab's portal to register again")


@pytest.mark.parametrize("variant", SELECTED)
def test_app_cycles_leave_bluetoothd_alive_and_every_service_found(
        variant: str, bluez: str, portal_lab: PortalLab, bluetoothd: Bluetoothd,
        system_bus: SystemBus, metrics: Metrics) -> None:
    if bluez != "att":
        pytest.skip("runs once per generation, in the classic (att) pass, with "
                    "bluetoothd's own ATT defaults")
    from mushpi_ble.testing.controller import SimulatedController

    controller = SimulatedController(seed=29)
    controller.stage.update(PORTAL_STAGE)
    series = Cycles(variant, VARIANTS[variant], system_bus, bluetoothd, controller)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.enter_context(lab_portal_set_aside(portal_lab, bluetoothd, bluez))
        suppressed = (None if series.variant.readvert_at_connect
                      else stack.enter_context(advert_kept_at_connect()))
        if series.variant.monitor:
            stack.enter_context(bus_recorded(JOB / f"dbus-monitor-{variant}.txt"))
        series.start_daemon()
        for index in range(1, CYCLES + 1):
            series.run(index)
        series.bluetoothd.stop()
    took = time.monotonic() - started
    key = f"cycles.{variant}"
    metrics.set(f"{key}.cycles", CYCLES)
    metrics.set(f"{key}.failed", len(series.failures))
    metrics.set(f"{key}.kinds", dict(series.kinds))
    metrics.set(f"{key}.crashes", series.crashes)
    metrics.set(f"{key}.late_announcements", series.late_announcements)
    metrics.set(f"{key}.wall_s", round(took, 1))
    for d in series.durations:
        metrics.add(f"{key}.cycle_s", d)
    log.info("cycles variant=%s cycles=%d failed=%d kinds=%s wall_s=%.1f", variant, CYCLES,
             len(series.failures), series.kinds, took)
    assert not series.failures, (
        f"{len(series.failures)} of {CYCLES} cycles failed ({series.kinds}):\n"
        + "\n".join(series.failures))
    if suppressed is not None:
        assert suppressed[0] > 0, "no advert re-registration at connect was suppressed"
