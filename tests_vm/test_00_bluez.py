"""The lab itself: bluetoothd with both virtual controllers, per configuration."""

from __future__ import annotations

from conftest import CENTRAL_ADAPTER, PERIPHERAL_ADAPTER, Bluetoothd, SystemBus


def test_both_adapters_powered(bluez: str, bluetoothd: Bluetoothd,
                               system_bus: SystemBus) -> None:
    assert bluetoothd.mode == bluez
    for adapter in (PERIPHERAL_ADAPTER, CENTRAL_ADAPTER):
        assert system_bus.adapter_powered(adapter), f"{adapter} is not powered"
    peripheral = system_bus.adapter_address(PERIPHERAL_ADAPTER)
    central = system_bus.adapter_address(CENTRAL_ADAPTER)
    assert peripheral != central
    assert peripheral.startswith("00:AA:01:"), peripheral
