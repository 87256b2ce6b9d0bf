"""The fake bluetoothd on its own: adapters, registration rules, lifetime, faults.

Applications are exported by hand with the D-Bus layer
(``hand_apps``); every rejection is checked by error name and
text, the way bluetoothd answers.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hand_apps import (
    CHRC,
    DESC,
    HCI0,
    MANAGER,
    SERVICE,
    HandApp,
    const,
    export_raw,
    heart_rate_app,
)

from mushpi_ble.dbus import (
    CallTimeout,
    Connection,
    DBusError,
    Interface,
    MatchRule,
    Property,
    open_connection,
)
from mushpi_ble.testing.fakebluez import AttError, FakeBluez

ADAPTER = "org.bluez.Adapter1"
PROPS = "org.freedesktop.DBus.Properties"
OM = "org.freedesktop.DBus.ObjectManager"
FAILED = "org.bluez.Error.Failed"
NO_VALID = "No valid service object found"
DB_FAILED = "Failed to create entry in database"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def bluez(bus_address: str) -> AsyncIterator[FakeBluez]:
    """bluetoothd that gives up on an application after 2 s (tests of its timeout)."""
    async with FakeBluez.serve(bus_address, call_timeout=2.0) as fake:
        yield fake


async def register_error(app: HandApp) -> tuple[str, str]:
    with pytest.raises(DBusError) as info:
        await app.register()
    return info.value.name, info.value.text


# -- registration rules ----------------------------------------------------------
def svc(conn: Connection, path: str = "/app/s0", **props: tuple[str, Any]) -> None:
    export_raw(conn, path, SERVICE, {"UUID": ("s", "180d"), "Primary": ("b", True), **props})


def chrc(conn: Connection, path: str = "/app/s0/c0", **props: tuple[str, Any]) -> None:
    base = {"UUID": ("s", "2a37"), "Service": ("o", "/app/s0"), "Flags": ("as", ["read"])}
    export_raw(conn, path, CHRC, {**base, **props})


def desc(conn: Connection, path: str = "/app/s0/c0/d0", **props: tuple[str, Any]) -> None:
    base = {"UUID": ("s", "2901"), "Characteristic": ("o", "/app/s0/c0"),
            "Flags": ("as", ["read"])}
    export_raw(conn, path, DESC, {**base, **props})


def steps(*builders: Callable[[Connection], None]) -> Callable[[Connection], None]:
    def build(conn: Connection) -> None:
        for builder in builders:
            builder(conn)
    return build


def _service_without_uuid(c: Connection) -> None:
    export_raw(c, "/app/s0", SERVICE, {"Primary": ("b", True)})


def _service_without_primary(c: Connection) -> None:
    export_raw(c, "/app/s0", SERVICE, {"UUID": ("s", "180d")})


def _char_without_flags(c: Connection) -> None:
    svc(c)
    export_raw(c, "/app/s0/c0", CHRC, {"UUID": ("s", "2a37"), "Service": ("o", "/app/s0")})


def _char_without_uuid(c: Connection) -> None:
    svc(c)
    export_raw(c, "/app/s0/c0", CHRC, {"Service": ("o", "/app/s0"), "Flags": ("as", ["read"])})


BROKEN: dict[str, tuple[Callable[[Connection], None], str]] = {
    "only-foreign-objects": (
        lambda c: export_raw(c, "/app/x", "com.example.Thing", {"A": ("u", 1)}), NO_VALID),
    "service-missing-uuid": (_service_without_uuid, DB_FAILED),
    "service-bad-uuid": (lambda c: svc(c, UUID=("s", "not-a-uuid")), DB_FAILED),
    "service-uuid-wrong-type": (lambda c: svc(c, UUID=("u", 0x180D)), DB_FAILED),
    "service-gap-uuid": (lambda c: svc(c, UUID=("s", "1800")), DB_FAILED),
    "service-missing-primary": (_service_without_primary, DB_FAILED),
    "service-handle-wrong-type": (lambda c: svc(c, Handle=("u", 0)), DB_FAILED),
    "char-unknown-flag": (steps(svc, lambda c: chrc(c, Flags=("as", ["read", "reed"]))),
                          NO_VALID),
    "char-flags-not-strings": (steps(svc, lambda c: chrc(c, Flags=("ai", [1]))),
                                  NO_VALID),
    "char-empty-flags": (steps(svc, lambda c: chrc(c, Flags=("as", []))), NO_VALID),
    "char-missing-flags": (_char_without_flags, NO_VALID),
    "char-missing-uuid": (_char_without_uuid, DB_FAILED),
    "char-bad-uuid": (steps(svc, lambda c: chrc(c, UUID=("s", "2a3g"))), DB_FAILED),
    "char-foreign-service": (
        steps(svc, lambda c: chrc(c, Service=("o", "/elsewhere/s0"))), NO_VALID),
    "char-service-not-a-path": (steps(svc, lambda c: chrc(c, Service=("s", "/app/s0"))),
                                NO_VALID),
    "char-without-service": (lambda c: chrc(c), NO_VALID),
    "desc-foreign-char": (
        steps(svc, chrc, lambda c: desc(c, Characteristic=("o", "/elsewhere/c0"))), NO_VALID),
    "desc-char-flag": (steps(svc, chrc, lambda c: desc(c, Flags=("as", ["notify"]))),
                       NO_VALID),
    "desc-bad-uuid": (steps(svc, chrc, lambda c: desc(c, UUID=("s", "12345"))), DB_FAILED),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_broken_application_refused(bluez: FakeBluez, app_conn: Connection,
                                          case: str) -> None:
    build, text = BROKEN[case]
    app = HandApp(app_conn)
    build(app_conn)
    assert await register_error(app) == (FAILED, text)
    assert bluez.adapter().applications == []
    # a refusal leaves no trace: the handles it would have used are free again
    await heart_rate_app(app_conn, root="/good").register()
    (good,) = bluez.adapter().applications
    assert good.services[0].handle == 0x10


async def test_no_object_manager(bluez: FakeBluez, app_conn: Connection) -> None:
    with pytest.raises(DBusError) as info:
        await app_conn.call("org.bluez", HCI0, MANAGER, "RegisterApplication", "oa{sv}",
                            ("/nothing", {}))
    assert (info.value.name, info.value.text) == (FAILED, "No object received")


async def test_empty_object_manager(bluez: FakeBluez, app_conn: Connection) -> None:
    assert await register_error(HandApp(app_conn)) == (FAILED, "No object received")


async def test_uuid_forms_and_attribute_table(bluez: FakeBluez, app_conn: Connection) -> None:
    app = HandApp(app_conn)
    service = app.service(uuid="0x180D")
    app.characteristic(service, "c0", "00002a37", ["read", "notify"])
    app.characteristic(service, "c1", "00002a39-0000-1000-8000-00805f9b34fb",
                       ["write", "reliable-write"])
    app.descriptor(f"{service}/c0", "d0", "2901", ["read"])
    await app.register()
    (registered,) = bluez.adapter().applications
    assert registered.sender == app_conn.unique_name
    assert registered.services[0].uuid == "0000180d-0000-1000-8000-00805f9b34fb"
    table = [(a.handle, a.type[:8], a.path.rsplit("/", 1)[-1]) for a in registered.attributes]
    assert table == [
        (0x10, "00002800", "s0"),
        (0x11, "00002803", "c0"), (0x12, "value", "c0"), (0x13, "00002902", "c0"),
        (0x14, "descript", "d0"),
        (0x15, "00002803", "c1"), (0x16, "value", "c1"), (0x17, "00002900", "c1"),
    ]
    assert registered.services[0].end_handle == 0x17
    c0 = registered.characteristic("2a37")
    assert (c0.handle, c0.ccc_handle) == (0x12, 0x13)


async def test_handle_written_back_when_zero(bluez: FakeBluez, app_conn: Connection) -> None:
    handles: dict[str, int] = {}

    def settable(path: str, iface: str, props: dict[str, tuple[str, Any]]) -> None:
        handles[path] = 0
        app_conn.export(path, [Interface(iface, properties=[
            *(Property(n, s, get=const(v)) for n, (s, v) in props.items()),
            Property("Handle", "q", get=lambda: handles[path],
                     set=lambda v: handles.__setitem__(path, v)),
        ])])

    app = HandApp(app_conn)
    settable("/app/s0", SERVICE, {"UUID": ("s", "180d"), "Primary": ("b", True)})
    settable("/app/s0/c0", CHRC, {"UUID": ("s", "2a37"), "Service": ("o", "/app/s0"),
                                  "Flags": ("as", ["read"])})
    await app.register()
    with trio.fail_after(2):
        while handles["/app/s0/c0"] == 0:
            await trio.sleep(0.01)
    assert handles == {"/app/s0": 0x10, "/app/s0/c0": 0x12}


async def test_requested_handles_honoured_and_clash_refused(
    bluez: FakeBluez, app_conn: Connection, bus_address: str
) -> None:
    app = HandApp(app_conn)
    svc(app_conn, Handle=("q", 0x40))
    chrc(app_conn, Handle=("q", 0x42))
    await app.register()
    (registered,) = bluez.adapter().applications
    assert registered.services[0].handle == 0x40
    assert registered.characteristic("2a37").handle == 0x42
    async with open_connection(bus_address) as other:
        clash = HandApp(other)
        svc(other, Handle=("q", 0x40))
        chrc(other)
        assert await register_error(clash) == (FAILED, DB_FAILED)


async def test_already_exists_and_does_not_exist(bluez: FakeBluez, app_conn: Connection,
                                                 bus_address: str) -> None:
    app = heart_rate_app(app_conn)
    await app.register()
    assert await register_error(app) == ("org.bluez.Error.AlreadyExists", "Already Exists")
    # the same root from another connection is another application
    async with open_connection(bus_address) as other:
        await heart_rate_app(other).register()
        assert len(bluez.adapter().applications) == 2
    await app.unregister()
    with pytest.raises(DBusError) as info:
        await app.unregister()
    assert (info.value.name, info.value.text) == ("org.bluez.Error.DoesNotExist",
                                                  "Does Not Exist")
    await app.register()


async def test_connection_leaving_unregisters(bluez: FakeBluez, bus_address: str) -> None:
    async with open_connection(bus_address) as conn:
        await heart_rate_app(conn).register()
        app = await bluez.wait_for_application()
        assert app.sender == conn.unique_name
    await bluez.wait_until(lambda: not bluez.adapter().applications)


async def test_interfaces_removed_of_a_service_drops_it(bluez: FakeBluez,
                                                        app_conn: Connection) -> None:
    app = heart_rate_app(app_conn)
    extra = app.service("s1", uuid="180f")
    app.characteristic(extra, "c0", "2a19", ["read"], b"\x64")
    await app.register()
    phone = await bluez.connect_central()
    assert await phone.read("2a19") == b"\x64"
    app_conn.unexport(f"{extra}/c0")
    app_conn.unexport(extra)
    registered = bluez.adapter().applications[0]
    await bluez.wait_until(lambda: len(registered.services) == 1)
    with pytest.raises(AttError) as info:
        await phone.read("2a19")
    assert info.value.code == 0x01
    # bluetoothd keeps the application itself registered
    assert await register_error(app) == ("org.bluez.Error.AlreadyExists", "Already Exists")
    assert await phone.read("2a38") == b"\x01"


async def test_interfaces_removed_of_a_characteristic(bluez: FakeBluez,
                                                      app_conn: Connection) -> None:
    app = heart_rate_app(app_conn)
    await app.register()
    phone = await bluez.connect_central()
    app_conn.unexport("/app/s0/c2")
    chrc_state = bluez.adapter().applications[0].characteristic("2a38")
    await bluez.wait_until(lambda: chrc_state.removed)
    with pytest.raises(AttError) as info:
        await phone.read("2a38")
    assert info.value.code == 0x0E


async def test_interfaces_added_after_registration_ignored(
    bluez: FakeBluez, app_conn: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mushpi_ble.testing.fakebluez")
    app = heart_rate_app(app_conn)
    await app.register()
    app.service("s9", uuid="180f")
    registered = bluez.adapter().applications[0]
    await bluez.wait_until(lambda: registered.ignored_paths == ["/app/s9"])
    assert "interfaces added ignored" in caplog.text
    assert len(registered.services) == 1


# -- adapter --------------------------------------------------------------------
async def test_adapter_properties(bluez: FakeBluez, app_conn: Connection) -> None:
    (props,) = await app_conn.call("org.bluez", HCI0, PROPS, "GetAll", "s", (ADAPTER,))
    values = {k: v for k, (_s, v) in props.items()}
    adapter = bluez.adapter("hci0")
    assert values["Address"] == adapter.address == "00:AA:01:00:00:00"
    assert values["Name"] == values["Alias"] == adapter.name == adapter.alias
    assert values["Powered"] is True and adapter.powered
    assert (values["Discoverable"], values["Pairable"], values["DiscoverableTimeout"]) == (
        False, True, 180)
    assert adapter.path == HCI0


async def test_alias_set_and_reset_emit_changes(bluez: FakeBluez, app_conn: Connection) -> None:
    rule = MatchRule(path=HCI0, interface=PROPS, member="PropertiesChanged")
    async with app_conn.subscribe(rule) as changes:
        await app_conn.call("org.bluez", HCI0, PROPS, "Set", "ssv",
                            (ADAPTER, "Alias", ("s", "MushPi")))
        with trio.fail_after(2):
            sig = await changes.receive()
        assert sig.body[1]["Alias"] == ("s", "MushPi")
        assert bluez.adapter().alias == "MushPi"
        await app_conn.call("org.bluez", HCI0, PROPS, "Set", "ssv", (ADAPTER, "Alias", ("s", "")))
        with trio.fail_after(2):
            sig = await changes.receive()
        assert sig.body[1]["Alias"] == ("s", bluez.adapter().name)
        await bluez.adapter().set_powered(False)
        with trio.fail_after(2):
            sig = await changes.receive()
        assert sig.body[1]["Powered"] == ("b", False)
    with pytest.raises(RuntimeError):
        await bluez.connect_central()


async def test_devices_appear_and_go(bluez: FakeBluez, app_conn: Connection) -> None:
    rule = MatchRule(path="/", interface=OM)
    async with app_conn.subscribe(rule) as signals:
        phone = await bluez.connect_central(address="aa:bb:cc:dd:ee:ff")
        with trio.fail_after(2):
            added = await signals.receive()
        path = "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF"
        assert added.member == "InterfacesAdded" and added.body[0] == path
        device = added.body[1]["org.bluez.Device1"]
        assert device["Connected"] == ("b", True)
        assert device["Address"] == ("s", "AA:BB:CC:DD:EE:FF")
        (objects,) = await app_conn.call("org.bluez", "/", OM, "GetManagedObjects")
        assert set(objects) == {"/org/bluez", HCI0, path}  # AgentManager1 lives on /org/bluez
        await phone.disconnect()
        with trio.fail_after(2):
            removed = await signals.receive()
        assert (removed.member, removed.body[0]) == ("InterfacesRemoved", path)


async def test_device_disconnect_from_the_application(bluez: FakeBluez,
                                                      app_conn: Connection) -> None:
    phone = await bluez.connect_central()
    await app_conn.call("org.bluez", phone.device_path, "org.bluez.Device1", "Disconnect")
    assert not phone.connected
    assert bluez.adapter().centrals == {}


# -- restarts and adapters ---------------------------------------------------------
async def test_restart(bus_address: str, app_conn: Connection) -> None:
    async with FakeBluez.serve(bus_address) as bluez:
        watcher_owner = await app_conn.watch_name_owner("org.bluez")
        assert watcher_owner.value == bluez.unique_name
        old = bluez.unique_name
        await heart_rate_app(app_conn).register()
        await app_conn.call("org.bluez", HCI0, PROPS, "Set", "ssv",
                            (ADAPTER, "Alias", ("s", "MushPi")))
        await bluez.adapter().set_powered(False)
        owners = MatchRule(sender="org.freedesktop.DBus", member="NameOwnerChanged",
                           arg0="org.bluez")
        added = MatchRule(path="/", interface=OM, member="InterfacesAdded")
        async with app_conn.subscribe(owners) as changes, app_conn.subscribe(added) as adds:
            await bluez.restart()
            with trio.fail_after(2):
                first, second = await changes.receive(), await changes.receive()
                agent_manager = await adds.receive()  # /org/bluez comes back first
                adapter_back = await adds.receive()
        assert first.body == ("org.bluez", old, "")
        assert second.body == ("org.bluez", "", bluez.unique_name)
        assert bluez.unique_name != old
        assert agent_manager.body[0] == "/org/bluez"
        assert adapter_back.body[0] == HCI0
        await watcher_owner.wait_value(bluez.unique_name)
        adapter = bluez.adapter()
        assert adapter.applications == []
        assert adapter.alias == adapter.name
        assert adapter.powered is True
        (props,) = await app_conn.call("org.bluez", HCI0, PROPS, "GetAll", "s", (ADAPTER,))
        assert props["Alias"] == ("s", adapter.name)
        # the application can register again on the new daemon
        app2 = HandApp(app_conn, "/app2")
        svc(app_conn, "/app2/s0")
        export_raw(app_conn, "/app2/s0/c0", CHRC, {
            "UUID": ("s", "2a37"), "Service": ("o", "/app2/s0"), "Flags": ("as", ["read"])})
        await app2.register()
        assert (await bluez.wait_for_application()).root == "/app2"


async def test_crash_restart_and_power_setting(bus_address: str, app_conn: Connection) -> None:
    async with FakeBluez.serve(bus_address, power_on_restart=False) as bluez:
        old = bluez.unique_name
        await heart_rate_app(app_conn).register()
        phone = await bluez.connect_central()
        await bluez.restart(graceful=False)
        assert bluez.unique_name != old
        assert not phone.connected
        assert bluez.adapter().powered is False
        assert bluez.adapter().applications == []


async def test_remove_and_add_adapter(bus_address: str, app_conn: Connection) -> None:
    async with FakeBluez.serve(bus_address, adapters=("hci0", "hci1")) as bluez:
        hci1 = bluez.adapter("hci1")
        assert hci1.address != bluez.adapter("hci0").address
        assert hci1.name == "raspberrypi #2"
        await heart_rate_app(app_conn).register("/org/bluez/hci1")
        rule = MatchRule(path="/", interface=OM)
        async with app_conn.subscribe(rule) as signals:
            await bluez.remove_adapter("hci1")
            with trio.fail_after(2):
                removed = await signals.receive()
            assert removed.member == "InterfacesRemoved"
            assert removed.body[0] == "/org/bluez/hci1"
            assert set(removed.body[1]) == {ADAPTER, MANAGER, "org.bluez.LEAdvertisingManager1"}
            assert "hci1" not in bluez.adapters
            back = await bluez.add_adapter("hci1")
            with trio.fail_after(2):
                added = await signals.receive()
            assert (added.member, added.body[0]) == ("InterfacesAdded", "/org/bluez/hci1")
        assert back.applications == [] and back.powered
        assert back.address == hci1.address


# -- faults -----------------------------------------------------------------------
async def test_refuse_next_registration(bluez: FakeBluez, app_conn: Connection) -> None:
    bluez.refuse_next_registration("org.bluez.Error.NotReady", "Resource Not Ready")
    app = heart_rate_app(app_conn)
    assert await register_error(app) == ("org.bluez.Error.NotReady", "Resource Not Ready")
    await app.register()
    assert len(bluez.adapter().applications) == 1


async def test_delayed_registration_answer(bluez: FakeBluez, app_conn: Connection) -> None:
    bluez.delay_next_call("RegisterApplication", 0.3)
    app = heart_rate_app(app_conn)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.register)
        await trio.sleep(0.1)
        assert bluez.adapter().applications == []
    assert len(bluez.adapter().applications) == 1


async def test_stalled_daemon(bluez: FakeBluez, app_conn: Connection) -> None:
    bluez.stop_reading()
    with pytest.raises(CallTimeout):
        await app_conn.call("org.bluez", HCI0, PROPS, "Get", "ss", (ADAPTER, "Powered"),
                            timeout=0.3)
    bluez.resume_reading()
    assert await app_conn.call("org.bluez", HCI0, PROPS, "Get", "ss",
                               (ADAPTER, "Powered")) == (("b", True),)


# -- independent clients ---------------------------------------------------------
def _dbus_send(address: str, *args: str) -> str:
    out = subprocess.run(["dbus-send", f"--bus={address}", "--print-reply", "--dest=org.bluez",
                          *args], capture_output=True, text=True, timeout=10, check=False)
    return out.stdout + out.stderr


async def test_checked_with_dbus_send(bluez: FakeBluez, bus_address: str) -> None:
    out = await trio.to_thread.run_sync(
        _dbus_send, bus_address, "/", f"{OM}.GetManagedObjects")
    assert 'object path "/org/bluez/hci0"' in out
    assert 'string "org.bluez.Adapter1"' in out
    assert 'string "00:AA:01:00:00:00"' in out
    out = await trio.to_thread.run_sync(
        _dbus_send, bus_address, HCI0, f"{PROPS}.Set", f"string:{ADAPTER}", "string:Alias",
        "variant:string:Shroom")
    assert "Error" not in out
    assert bluez.adapter().alias == "Shroom"


async def test_runs_as_a_process(bus_address: str, app_conn: Connection) -> None:
    owner = await app_conn.watch_name_owner("org.bluez")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "mushpi_ble.testing.fakebluez", "--address", bus_address,
         "--adapters", "hci0,hci1", "--log-level", "INFO"],
        env=env, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(15):
            while not owner.value:
                await owner.wait_transition()
        with trio.fail_after(5):  # adapters are announced right after the name is taken
            while True:
                (objects,) = await app_conn.call("org.bluez", "/", OM, "GetManagedObjects")
                if len(objects) == 3:
                    break
                await trio.sleep(0.02)
        assert set(objects) == {"/org/bluez", "/org/bluez/hci0", "/org/bluez/hci1"}
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        chunks = []
        with trio.fail_after(10):
            while chunk := await proc.stderr.receive_some(1 << 16):
                chunks.append(chunk)
            code = await proc.wait()
            await owner.wait_value("")
        assert code == 0
        log = b"".join(chunks).decode()
        assert "serving bus_name=org.bluez" in log and "stopping signal=SIGTERM" in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
