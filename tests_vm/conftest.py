"""Fixtures of the real-bluetoothd suite (runs inside the VM of scripts/vm-test).

The VM has its own system bus, btvirt with four linked controllers (hci0 for
our peripheral, hci1 for the central, hci2 for a second phone, hci3 its peer)
and a live btmon. This suite starts bluetoothd itself, once per
configuration ("att": one classic bearer, ``[GATT] Channels=1``; "eatt":
bluetoothd's default, enhanced ATT), and restarts it while the peripheral runs.

The central is bleak, driven on an asyncio loop in a thread of its own so
that one connection can span several tests and the in-process BlePortal
(trio in its own thread) can be watched from the test thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from jeepney import DBusAddress, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import DBusErrorResponse

T = TypeVar("T")

BLUETOOTHD = "/usr/libexec/bluetooth/bluetoothd"
JOB = Path(os.environ.get("MUSHPI_VM_JOB", "."))
PERIPHERAL_ADAPTER = "hci0"
CENTRAL_ADAPTER = "hci1"
SECOND_CENTRAL_ADAPTER = "hci2"  # a second phone (tests_vm/test_60_unattended.py)
HELPER_ADAPTER = "hci3"  # a peer of the second phone (tests_vm/test_60_unattended.py)

# bluetoothd configurations, one per pass. The classic pass also keeps the
# ATT MTU at its minimum (23) so that long values need several reads.
#
# Both are LE only (ControllerMode = le). The two btvirt controllers cannot
# page each other over BR/EDR, yet a Secure Connections pairing derives a
# BR/EDR link key too, and bluetoothd then tries a BR/EDR connection to each
# side a second later (Page Timeout). On bookworm's kernel 6.1.0-57 closing
# that failed L2CAP socket hits a kernel BUG (list corruption in
# hci_chan_del, bluetoothd stuck, the VM unusable). Without BR/EDR there is
# no link key, no such connection and no crash.
GENERAL = "[General]\nName = mushpi-vm\nControllerMode = le\n"
GENERATION = os.environ.get("MUSHPI_VM_GENERATION", "unknown")


def eatt_channels(generation: str) -> int:
    """``[GATT] Channels`` of the EATT pass: the ATT bearer plus this many minus one EATT bearers.

    Three (two EATT channels) where the central's kernel opens them one by
    one (bookworm's 6.1: LE credit-based channels). Two (one EATT channel) on
    trixie's 6.12, which opens them in one Enhanced Credit request — and as
    the requester it pairs the answer's channel IDs with its channels in the
    wrong order: the request lists the channel that triggered it first, the
    answer is matched in creation order (the list order that "Bluetooth:
    L2CAP: Fix L2CAP_ECRED_CONN_RSP response" established for the answering
    side). With two channels each ATT response then arrives on the other
    channel ("Failed to handle response PDU" in bluetoothd's log), the
    request times out after 30 s and the link stalls. Only the requesting
    side is wrong, and in the VM that is the central (hci1), never our
    peripheral: a phone's own stack asks, the Pi's kernel answers correctly.
    With one EATT channel per request nothing can be crossed.
    """
    return 2 if generation == "trixie" else 3


CONFIGS: dict[str, str] = {
    "att": GENERAL + "\n[GATT]\nChannels = 1\nExchangeMTU = 48\n",
    "eatt": GENERAL + f"\n[GATT]\nChannels = {eatt_channels(GENERATION)}\n",
}
# glibc fills memory bluetoothd frees (and allocates) with this byte: a use of freed
# memory then reads garbage at once and bluetoothd crashes where, unperturbed, it
# may go on by luck (5.82 clearing a gone bonded phone's subscriptions on our freed
# characteristics at UnregisterApplication: see GattApplication.unregister).
BLUETOOTHD_ENV = {"MALLOC_PERTURB_": "165"}
# bluetoothd's debug lines of its agent code, always: the tests read from them
# which agent was asked ("Calling Agent.Request...") and which one is the
# default ("Default agent set to ..."). MUSHPI_VM_BLUETOOTHD_DEBUG=1: all of them.
AGENT_DEBUG = "--debug=*src/agent.c"


def selected_passes(value: str | None) -> tuple[str, ...]:
    """The passes to run: ``MUSHPI_VM_PASSES`` ("att eatt" or a part of it), else all."""
    names = tuple((value or "").replace(",", " ").split())
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise pytest.UsageError(f"MUSHPI_VM_PASSES: unknown pass {unknown}; known: {list(CONFIGS)}")
    return names or tuple(CONFIGS)


PASSES = selected_passes(os.environ.get("MUSHPI_VM_PASSES"))


def pairs_first(mode: str) -> bool:
    """Whether the central pairs (its own ``Pair()``) before any GATT on this pass.

    On trixie (kernel 6.12) with EATT, the peripheral refuses the EATT
    channels on an unencrypted link and the central's kernel then starts
    pairing by itself; bluetoothd asks the *default* agent about that on both
    sides — ours, which rightly refuses the central's (hci1's) device — and
    the link drops. A phone that wants EATT pairs first; so does the hub here,
    through ``Device1.Pair()`` with its own agent, so the link is encrypted
    before EATT opens. On bookworm (kernel 6.1) EATT opens without pairing.
    """
    return mode == "eatt" and GENERATION == "trixie"


# bluetoothd 5.82's GATT-client plugins (LE audio and friends) are left out on
# trixie. Their services need an encrypted link, so they start once a pairing
# encrypts it: then the peripheral's side subscribes to the central's audio
# services (both sides are this one bluetoothd) while the central discovers
# ours, and the emulated link stalls — packets complete 30 s late (btmon:
# "Number of Completed Packets", latency ~30000 ms), ServicesResolved never
# comes and Pair() never answers. Seen only in this emulator; our service
# uses none of them.
TRIXIE_PLUGINS_OFF = "vcp,micp,mcp,ccp,csip,bass,bap,battery,hog,deviceinfo"


def pass_arguments(mode: str) -> list[str]:
    """bluetoothd arguments of one pass beyond the configuration file."""
    return ["-P", TRIXIE_PLUGINS_OFF] if GENERATION == "trixie" else []


# -- figures ----------------------------------------------------------------------------
class Metrics:
    """Figures collected by the tests, printed at the end and saved to metrics.json."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.values: dict[str, Any] = {}

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.values)
        for key, samples in self.samples.items():
            ordered = sorted(samples)
            out[key] = {
                "n": len(ordered),
                "p50": round(statistics.median(ordered), 2),
                "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
                "max": round(ordered[-1], 2),
            }
        return out


METRICS = Metrics()


@pytest.fixture(scope="session")
def metrics() -> Metrics:
    return METRICS


def pytest_configure(config: pytest.Config) -> None:
    if "MUSHPI_VM_JOB" not in os.environ:
        raise pytest.UsageError(
            "tests_vm/ runs inside the VM that scripts/vm-test boots (real bluetoothd, "
            "btvirt, a system bus of its own): run scripts/vm-test [pytest args]")


def pytest_sessionstart(session: pytest.Session) -> None:
    METRICS.set("suite_started_uptime_s", _uptime())
    METRICS.set("generation", os.environ.get("MUSHPI_VM_GENERATION", "unknown"))
    METRICS.set("passes", list(PASSES))
    METRICS.set("kernel", os.uname().release)
    METRICS.set("python", platform.python_version())
    METRICS.set("bluetoothd", _bluetoothd_version())
    # The in-process peripheral's and the central's log lines, for after a failure.
    with contextlib.suppress(OSError):
        handler = logging.FileHandler(JOB / "suite.log")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(threadName)s %(name)s %(message)s"))
        logging.getLogger().addHandler(handler)


def merged_metrics(earlier: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """This run's figures beside an earlier step's of the same boot (scripts/vm/steps.sh
    runs the suite, then the Bumble step): a figure both measured keeps the earlier
    step's (the Bumble step's own classic-pass start is not the suite's), the passes of
    both are listed, and the end is this run's."""
    merged = {**summary, **earlier}
    merged["passes"] = list(dict.fromkeys([*earlier.get("passes", []),
                                           *summary.get("passes", [])]))
    merged["suite_finished_uptime_s"] = summary["suite_finished_uptime_s"]
    return merged


def _earlier_metrics(path: Path) -> dict[str, Any]:
    """An earlier step's figures; none when there are none or they cannot be read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    METRICS.set("suite_finished_uptime_s", _uptime())
    summary = merged_metrics(_earlier_metrics(JOB / "metrics.json"), METRICS.summary())
    with contextlib.suppress(OSError):
        (JOB / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    terminalreporter.section("real bluetoothd figures (ms unless named _s)")
    for key in sorted(summary):
        terminalreporter.write_line(f"{key:40} {summary[key]}")


def _bluetoothd_version() -> str:
    try:
        out = subprocess.run([BLUETOOTHD, "--version"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return out.stdout.strip() or "unknown"


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


# -- D-Bus (system bus of the VM), blocking, for the test thread --------------------------
class SystemBus:
    """A small blocking jeepney client for adapter and device calls."""

    def __init__(self) -> None:
        self.conn: DBusConnection = open_dbus_connection(bus="SYSTEM")

    def close(self) -> None:
        self.conn.close()

    def call(self, path: str, interface: str, member: str, signature: str | None = None,
             body: tuple[Any, ...] = (), *, dest: str = "org.bluez",
             timeout: float = 10.0) -> tuple[Any, ...]:
        addr = DBusAddress(path, bus_name=dest, interface=interface)
        msg = new_method_call(addr, member, signature, body)
        reply = self.conn.send_and_get_reply(msg, timeout=timeout)
        if reply.header.message_type.name == "error":
            raise DBusErrorResponse(reply)
        return tuple(reply.body)

    def get(self, path: str, interface: str, prop: str) -> Any:
        (variant,) = self.call(path, "org.freedesktop.DBus.Properties", "Get", "ss",
                               (interface, prop), timeout=3.0)
        return variant[1]

    def bluez_owner(self) -> str | None:
        try:
            (owner,) = self.call("/org/freedesktop/DBus", "org.freedesktop.DBus",
                                 "GetNameOwner", "s", ("org.bluez",),
                                 dest="org.freedesktop.DBus", timeout=2.0)
        except DBusErrorResponse:
            return None
        return str(owner)

    def adapter_powered(self, adapter: str) -> bool:
        try:
            return bool(self.get(f"/org/bluez/{adapter}", "org.bluez.Adapter1", "Powered"))
        except (DBusErrorResponse, TimeoutError):
            return False

    def adapter_address(self, adapter: str) -> str:
        return str(self.get(f"/org/bluez/{adapter}", "org.bluez.Adapter1", "Address"))



def wait_for(predicate: Callable[[], T], timeout: float, what: str,
             interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- bluetoothd -----------------------------------------------------------------------------
class Bluetoothd:
    """The real bluetoothd, started and restarted by the suite; logs in the job folder."""

    def __init__(self, bus: SystemBus) -> None:
        self.bus = bus
        self.proc: subprocess.Popen[bytes] | None = None
        self.mode: str | None = None
        # Numbered on from an earlier step's logs of the same boot.
        self.starts = len(list(JOB.glob("bluetoothd-*.log")))
        self.started_at = 0.0
        self.btmon_start = 0

    def start(self, mode: str, config: str | None = None, *, helper: bool = True) -> float:
        """Start with configuration ``mode`` (``CONFIGS[mode]`` unless ``config`` is
        given); returns seconds until all adapters are up (hci3 too unless ``helper`` is
        False: Bumble holds it through the HCI user channel, which bluetoothd never sees)."""
        assert self.proc is None, "bluetoothd is already running"
        conf = JOB / f"main-{mode}.conf"
        conf.write_text(CONFIGS[mode] if config is None else config)
        self.starts += 1
        self.btmon_start = btmon_offset()
        log = (JOB / f"bluetoothd-{self.starts:02d}-{mode}.log").open("ab")
        args = [BLUETOOTHD, "-n", "-E", "-f", str(conf)]
        args.append("-d" if os.environ.get("MUSHPI_VM_BLUETOOTHD_DEBUG") else AGENT_DEBUG)
        args += pass_arguments(mode) + os.environ.get("MUSHPI_VM_BLUETOOTHD_ARGS", "").split()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **BLUETOOTHD_ENV})
        log.close()
        self.mode = mode

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"bluetoothd exited with {self.proc.returncode} "
                            f"(see bluetoothd-{self.starts:02d}-{mode}.log)")
            return (self.bus.bluez_owner() is not None
                    and self.bus.adapter_powered(PERIPHERAL_ADAPTER)
                    and self.bus.adapter_powered(CENTRAL_ADAPTER)
                    and self.bus.adapter_powered(SECOND_CENTRAL_ADAPTER)
                    and (not helper or self.bus.adapter_powered(HELPER_ADAPTER)))

        adapters = "hci0 to hci3" if helper else "hci0 to hci2"
        wait_for(ready, 30, f"bluetoothd ({mode}) with {adapters} powered", 0.1)
        return time.monotonic() - self.started_at

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def exited(self) -> int | None:
        """The exit status if the bluetoothd we started has ended (negative: the signal)."""
        return None if self.proc is None else self.proc.poll()

    @property
    def log_path(self) -> Path:
        return JOB / f"bluetoothd-{self.starts:02d}-{self.mode}.log"

    def log_offset(self) -> int:
        """Where the running bluetoothd's log ends now (to look at one test's lines)."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        wait_for(lambda: self.bus.bluez_owner() is None, 10, "org.bluez to leave the bus")


@pytest.fixture(scope="session")
def system_bus() -> Iterator[SystemBus]:
    bus = SystemBus()
    yield bus
    bus.close()


@pytest.fixture(scope="session")
def bluetoothd(system_bus: SystemBus) -> Iterator[Bluetoothd]:
    daemon = Bluetoothd(system_bus)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session", params=PASSES)
def bluez(request: pytest.FixtureRequest, bluetoothd: Bluetoothd, metrics: Metrics) -> str:
    """One pass of the suite per bluetoothd configuration; yields the mode name."""
    mode: str = request.param
    if bluetoothd.mode != mode:
        bluetoothd.stop()
        took = bluetoothd.start(mode)
        metrics.set(f"{mode}.bluetoothd_start_s", round(took, 2))
    return mode


# -- asyncio for bleak ----------------------------------------------------------------------
class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` submits a coroutine with a deadline."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(coro, timeout)

        future = asyncio.run_coroutine_threadsafe(bounded(), self.loop)
        try:
            return future.result(timeout + 5)
        except TimeoutError:
            future.cancel()
            raise

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


def btmon_running() -> bool:
    """Whether a btmon runs in the guest (no procps in the trixie root: /proc read here)."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "btmon":
                return True
    return False


def restart_btmon_if_gone() -> bool:
    """Start btmon again, appending to the live capture, if it has crashed; whether it had.

    btmon 5.66 crashes (SIGSEGV, a call through a null pointer) on the link to Bumble
    (tests_vm/test_85_bumble.py): its last line is bluetoothd's Write Request to a CCC
    of Bumble's GATT database, decoded as a write to a "Characteristic (0x2803)" (a
    declaration's handle in the Pi's own database). The tests after it read the air
    from btmon.txt. The guest's init started the first btmon the same way.
    """
    if btmon_running():
        return False
    with (JOB / "btmon.txt").open("ab") as out:
        subprocess.Popen(["stdbuf", "-oL", "btmon", "-t"], stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True)
    offset = btmon_offset()
    wait_for(lambda: btmon_offset() > offset, 10, "the new btmon to write its first lines")
    return True


def btmon_offset() -> int:
    """Where the live btmon text log ends now (to look at one test's traffic)."""
    try:
        return (JOB / "btmon.txt").stat().st_size
    except OSError:
        return 0


def btmon_since(offset: int, *needles: str, timeout: float = 40.0) -> str:
    """The btmon text written since ``offset``, once it holds every one of ``needles``.

    btmon writes line-buffered through 9p and lags the air, more so under load:
    after trixie's EATT notification tests it was seen 14 s behind. It returns
    as soon as every needle is there, so the long deadline costs a passing test
    nothing; without needles, give it a moment. Returns what is there at the
    deadline (the caller's assertions then say what is missing).
    """
    deadline = time.monotonic() + (timeout if needles else 0.5)
    while True:
        with (JOB / "btmon.txt").open("rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
        if (needles and all(n in text for n in needles)) or time.monotonic() >= deadline:
            return text
        time.sleep(0.2)


def device_path(address: str, adapter: str = CENTRAL_ADAPTER) -> str:
    return f"/org/bluez/{adapter}/dev_{address.replace(':', '_')}"


def connect_device(bus: SystemBus, address: str, adapter: str = CENTRAL_ADAPTER,
                   timeout: float = 40.0) -> str:
    """Connect ``adapter`` to ``address`` (no waiting for services); the device path.

    A device bluetoothd does not know yet is connected by address with
    ``Adapter1.ConnectDevice`` (experimental API, hence ``-E``): no scan
    needed. A known one (just discovered, or lingering ~30 s after a
    disconnect) answers AlreadyExists; then ``Device1.Connect``.
    """
    path = device_path(address, adapter)
    try:
        (path,) = bus.call(f"/org/bluez/{adapter}", "org.bluez.Adapter1", "ConnectDevice",
                           "a{sv}", ({"Address": ("s", address),
                                      "AddressType": ("s", "public")},), timeout=timeout)
    except DBusErrorResponse as exc:
        if exc.name != "org.bluez.Error.AlreadyExists":
            raise
        try:
            bus.call(path, "org.bluez.Device1", "Connect", timeout=timeout)
        except DBusErrorResponse as again:
            if again.name != "org.bluez.Error.AlreadyConnected":
                raise
    return str(path)


def pair_as_central(path: str, timeout: float = 45.0, *, adapter: str = CENTRAL_ADAPTER,
                    capability: str = "NoInputNoOutput",
                    passkey: Callable[[], int | None] | None = None,
                    ) -> list[tuple[str, tuple[Any, ...]]]:
    """``Device1.Pair()`` from the central's own agent (central_agent.py); its calls.

    The agent is registered only for this call: while registered, bluetoothd
    would make it the default agent whenever no other is (our peripheral with
    pairing off), and it would be asked in the peripheral's place.
    ``capability`` KeyboardDisplay with ``passkey`` (polled until it gives the
    digits the peripheral showed) is passkey entry. Raises
    ``central_agent.PairingFailed``.
    """
    from central_agent import CentralAgent

    agent = CentralAgent(adapter, capability, passkey)

    async def pair() -> None:
        await agent.start()
        try:
            await agent.pair(path, timeout=timeout)
        finally:
            await agent.stop()

    with LoopThread("central-agent") as loop:
        loop.run(pair(), timeout + 15)
    return agent.calls


def central_connect(bus: SystemBus, address: str, adapter: str = CENTRAL_ADAPTER,
                    timeout: float = 40.0, *, pair: bool = False) -> str:
    """Connect the central to ``address`` through bluetoothd; returns the device path.

    With ``pair`` (see ``pairs_first``) the central pairs right after the link
    is up, before service discovery ends and EATT opens — afresh each time:
    the bonds of an earlier connection are forgotten on both sides first, as
    the central of a bonded device would keep the GATT handles it cached from
    another peripheral process (``Invalid Handle`` on the next read).

    Why not let bleak call Connect: with both controllers behind one
    bluetoothd in the emulator, the ATT bearer comes up before the kernel's
    Device Connected event is processed, so bluetoothd marks the device
    connected without emitting ``Connected`` ("Device ... is already
    connected" in its log). bleak's cached state then says disconnected
    and it gives up ("failed to discover services, device disconnected").
    A bleak client created after the connection reads the true state.
    """
    if pair:
        forget_bond(bus, adapter, address)
        forget_bond(bus, PERIPHERAL_ADAPTER, bus.adapter_address(adapter))
    path = connect_device(bus, address, adapter, timeout)
    if pair:
        pair_as_central(path)
    wait_for(lambda: device_prop(bus, path, "Connected"), timeout, f"{path} Connected")
    wait_for(lambda: device_prop(bus, path, "ServicesResolved"), timeout,
             f"{path} ServicesResolved")
    return path


def forget_bond(bus: SystemBus, adapter: str, address: str) -> None:
    """``Adapter1.RemoveDevice``: disconnects and forgets keys; quiet when unknown."""
    with contextlib.suppress(DBusErrorResponse, TimeoutError):
        bus.call(f"/org/bluez/{adapter}", "org.bluez.Adapter1", "RemoveDevice", "o",
                 (device_path(address, adapter),), timeout=15)


def device_prop(bus: SystemBus, path: str, prop: str) -> bool:
    """A Device1 flag (Connected, Paired, ServicesResolved); False while it cannot be read."""
    try:
        return bool(bus.get(path, "org.bluez.Device1", prop))
    except (DBusErrorResponse, TimeoutError):
        return False


# -- the in-process peripheral (BlePortal) and a Hub connection to it -------------------------
PORTAL_STAGE = {"species": "Shiitake", "stage": "Pinning"}
PORTAL_NAME = "MushPi-ShiitakePinning"


class PortalLab:
    """One BlePortal on hci0 per pass, with the simulated controller behind it."""

    def __init__(self, portal: Any, controller: Any, address: str, sighting: Any) -> None:
        self.portal = portal
        self.controller = controller
        self.address = address
        self.sighting = sighting

    def status(self) -> dict[str, Any]:
        return dict(self.portal.get_status())


@pytest.fixture(scope="session")
def portal_lab(bluez: str, system_bus: SystemBus, metrics: Metrics) -> Iterator[PortalLab]:
    from hub import HubScanner

    from mushpi_ble.config import load_settings
    from mushpi_ble.portal import BlePortal
    from mushpi_ble.testing.controller import SimulatedController

    controller = SimulatedController(seed=11)
    controller.stage.update(PORTAL_STAGE)
    settings = load_settings(environ={"MUSHPI_BLE_ADAPTER": PERIPHERAL_ADAPTER}, env_file=None)
    portal = BlePortal(settings)
    portal.set_callbacks(controller.callbacks())
    address = system_bus.adapter_address(PERIPHERAL_ADAPTER)
    with LoopThread("scan") as scan_loop:
        scanner = HubScanner()
        scan_loop.run(scanner.start(), 20)  # scan first, then advertise
        try:
            started = time.monotonic()
            portal.start()
            metrics.set(f"{bluez}.portal_start_s", round(time.monotonic() - started, 2))
            portal.update_advertising_name()
            # The controller publishes a reading at start (env reads answer the
            # last published value).
            reading = controller.sensor_reading()
            portal.publish_env(reading["temperature"], reading["humidity"], reading["co2"],
                               reading["light"])
            sighting = scan_loop.run(scanner.discover(address, PORTAL_NAME), 70)
            metrics.set(f"{bluez}.portal_discovery_rescans", scanner.rescans)
            metrics.set(f"{bluez}.portal_start_to_advert_s", round(sighting.at - started, 2))
        finally:
            scan_loop.run(scanner.stop(), 20)
    try:
        yield PortalLab(portal, controller, address, sighting)
    finally:
        portal.stop()


@contextlib.contextmanager
def portal_in_place_of_the_lab(portal_lab: PortalLab, **env: str) -> Iterator[Any]:
    """The lab's portal stopped; one with these ``MUSHPI_*`` settings (on hci0, with the
    lab's controller) in its place, and the lab's started again afterwards (and waited
    for until it registered its application and agent: the next test may pair)."""
    from mushpi_ble.config import load_settings
    from mushpi_ble.portal import BlePortal

    portal_lab.portal.stop()
    settings = load_settings(environ={"MUSHPI_BLE_ADAPTER": PERIPHERAL_ADAPTER, **env},
                             env_file=None)
    portal = BlePortal(settings)
    portal.set_callbacks(portal_lab.controller.callbacks())
    try:
        portal.start()
        yield portal
    finally:
        portal.stop()
        portal_lab.portal.start()

        def ready() -> bool:
            status = portal_lab.status()
            return bool(status["registered"] and status["pairing"]["agent_registered"])

        wait_for(ready, 20, "the lab's portal to register again")


class HubLink:
    """A bleak connection from hci1 to the portal, shared by the tests of one pass."""

    def __init__(self, loop: LoopThread, hub: Any, path: str) -> None:
        self.loop = loop
        self.hub = hub
        self.path = path

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return self.loop.run(coro, timeout)


@pytest.fixture(scope="session")
def hub_link(bluez: str, portal_lab: PortalLab, system_bus: SystemBus,
             metrics: Metrics) -> Iterator[HubLink]:
    with hub_connection(bluez, portal_lab, system_bus, metrics=metrics) as link:
        yield link


@contextlib.contextmanager
def hub_connection(bluez: str, portal_lab: PortalLab, system_bus: SystemBus, *,
                   name: str = "hub", metrics: Metrics | None = None) -> Iterator[HubLink]:
    """The central connects (pairing first where the pass needs it) and bleak connects
    over it, as the app does; disconnected when the block ends."""
    from hub import Hub, device_at

    started = time.monotonic()
    path = central_connect(system_bus, portal_lab.address, pair=pairs_first(bluez))
    if metrics is not None:
        metrics.add("connect_s", time.monotonic() - started)
    loop = LoopThread(name)
    hub = Hub(device_at(path, portal_lab.address, PORTAL_NAME))
    try:
        loop.run(hub.connect(), 60)
        yield HubLink(loop, hub, path)
    finally:
        with contextlib.suppress(Exception):
            loop.run(hub.disconnect(), 30)
        loop.close()
