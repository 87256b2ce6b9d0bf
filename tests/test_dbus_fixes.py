"""Additions to the D-Bus layer made for the fake bluetoothd."""

from __future__ import annotations

import pytest
import trio

from mushpi_ble.dbus import CallContext, CallTimeout, Connection, Interface, Method

IFACE = "com.example.Stall1"


async def test_pause_and_resume_receiving(server: Connection, client: Connection) -> None:
    """A paused connection reads nothing: calls wait, then are answered on resume."""
    seen: list[str] = []

    def echo(_ctx: CallContext, text: str) -> str:
        seen.append(text)
        return text

    server.export("/stall", [Interface(IFACE, methods=[Method("Echo", "s", "s", handler=echo)])])
    server.pause_receiving()
    with pytest.raises(CallTimeout):
        await client.call(server.unique_name, "/stall", IFACE, "Echo", "s", ("first",),
                          timeout=0.2)
    assert seen == []
    server.resume_receiving()
    reply = await client.call(server.unique_name, "/stall", IFACE, "Echo", "s", ("second",))
    assert reply == ("second",)
    assert seen == ["first", "second"]  # nothing was lost while paused
    with trio.fail_after(2):
        while client.stats.late_replies == 0:
            await trio.sleep(0.01)
