"""Commands to the kernel's Bluetooth management interface, as ``btmgmt`` sends them.

The lab speaks to the kernel directly where a phone's own stack would act on its
own (drop a link at once, use its own IO capability): ``btmgmt``'s exit and output
differ between 5.66 and 5.82 (5.82's stays after some commands).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

AF_BLUETOOTH, BTPROTO_HCI, HCI_CHANNEL_CONTROL, HCI_DEV_NONE = 31, 1, 3, 0xFFFF
MGMT_OP_SET_POWERED = 0x0005
MGMT_OP_DISCONNECT = 0x0014
MGMT_OP_SET_IO_CAPABILITY = 0x0018
KEYBOARD_DISPLAY = 0x04


class _SockaddrHci(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("dev", ctypes.c_ushort),
                ("channel", ctypes.c_ushort)]


def command(index: int, opcode: int, params: bytes, timeout: float = 10.0) -> int:
    """Send one management command to controller ``index``; its status (0 = success)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with socket.socket(AF_BLUETOOTH, socket.SOCK_RAW, BTPROTO_HCI) as sock:
        addr = _SockaddrHci(AF_BLUETOOTH, HCI_DEV_NONE, HCI_CHANNEL_CONTROL)
        if libc.bind(sock.fileno(), ctypes.byref(addr), ctypes.sizeof(addr)) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"binding the management socket: {os.strerror(errno)}")
        sock.send(struct.pack("<HHH", opcode, index, len(params)) + params)
        sock.settimeout(timeout)
        while True:  # other management events are broadcast to this socket too
            event, event_index, _length = struct.unpack_from("<HHH", data := sock.recv(512))
            if event in (0x0001, 0x0002) and event_index == index:  # complete / status
                answered, status = struct.unpack_from("<HB", data, 6)
                if answered == opcode:
                    return int(status)


def disconnect(index: int, address: str) -> int:
    """MGMT Disconnect of LE public ``address``: 0 done, 2 not connected."""
    bdaddr = bytes.fromhex(address.replace(":", ""))[::-1]
    return command(index, MGMT_OP_DISCONNECT, struct.pack("<6sB", bdaddr, 1))


def set_io_capability(index: int, capability: int) -> None:
    """MGMT Set IO Capability: what the controller's side of a pairing offers."""
    status = command(index, MGMT_OP_SET_IO_CAPABILITY, bytes([capability]))
    assert status == 0, f"Set IO Capability on hci{index}: status {status}"


def set_powered(index: int, on: bool, timeout: float = 10.0) -> int:
    """MGMT Set Powered: 0 done. Powered off, the controller can be bound to the HCI
    user channel (Bumble's ``hci-socket:N``), which hides it from bluetoothd."""
    return command(index, MGMT_OP_SET_POWERED, bytes([int(on)]), timeout)
