"""The D-Bus benchmark's client: blocking, on a plain socket, the same for every server."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from mushpi_ble.bench.dbus_objects import BUS_NAME, BUS_PATH, VALUE_LEN
from mushpi_ble.bench.raw_message import (
    FIELD_ERROR_NAME,
    FIELD_MEMBER,
    FIELD_REPLY_SERIAL,
    FIELD_SIGNATURE,
    HEADER,
    MSG_ERROR,
    MSG_METHOD_RETURN,
    MSG_SIGNAL,
    SEQ,
    U32,
    RawMessage,
    align,
    parse_fields,
    value_offset,
)


class BurstResult(NamedTuple):
    requested: int
    received: int
    duplicates: int
    gaps: int
    acked: bool
    error: str
    first_ns: int | None
    last_ns: int | None


class BusClient:
    """A minimal blocking D-Bus client on a plain socket.

    jeepney authenticates and encodes messages; replies and signals are
    decoded here with a few ``struct`` calls, so the client's own cost per
    message stays small and identical for every server it talks to.
    """

    READ_SIZE = 1 << 18

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        from jeepney.auth import BEGIN, Authenticator
        from jeepney.bus import get_connectable_addresses

        path = next(get_connectable_addresses(address))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.connect(str(path))
        auth = Authenticator()  # sends the leading NUL byte itself
        for request in auth:
            self.sock.sendall(request)
            auth.feed(self.sock.recv(4096))
        self.sock.sendall(BEGIN)
        self._timeout = -1.0
        self.set_timeout(timeout)
        self._default_timeout = timeout
        self._buf = b""
        self._pos = 0
        self._serial = 0
        self.unique_name = str(self.call(BUS_NAME, BUS_PATH, BUS_NAME, "Hello")[0])

    def close(self) -> None:
        self.sock.close()

    def set_timeout(self, seconds: float) -> None:
        """A kernel receive timeout (SO_RCVTIMEO): no extra poll() per read."""
        if seconds == self._timeout:
            return
        whole = int(seconds)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                             struct.pack("ll", whole, int((seconds - whole) * 1e6)))
        self._timeout = seconds

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    # -- reading ------------------------------------------------------------
    def _fill(self) -> bool:
        """Read what the kernel has (waiting up to the timeout); False on timeout."""
        try:
            data = self.sock.recv(self.READ_SIZE)
        except (BlockingIOError, TimeoutError):
            return False
        if not data:
            raise ConnectionError("the bus closed the client connection")
        if self._pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0
        return True

    def _take(self) -> RawMessage | None:
        """The next complete message already read, or None."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 16:
            return None
        fields_len_info = HEADER[buf[pos]].unpack_from(buf, pos + 4)
        body_len, _serial, fields_len = fields_len_info
        fields_end = 16 + fields_len
        body_start = align(fields_end, 8)
        total = body_start + body_len
        if len(buf) - pos < total:
            return None
        self._pos = pos + total
        return RawMessage(buf[pos + 1], buf[pos : pos + total], fields_end, body_start)

    def receive(self) -> RawMessage:
        while True:
            msg = self._take()
            if msg is not None:
                return msg
            if not self._fill():
                raise TimeoutError("no message from the bus within the timeout")

    # -- calls --------------------------------------------------------------
    def template(self, destination: str, path: str, interface: str, member: str,
                 signature: str = "", body: Sequence[Any] = ()) -> bytearray:
        """A serialised method call whose serial (bytes 8-12) is patched per send."""
        from jeepney.wrappers import DBusAddress, new_method_call

        msg = new_method_call(DBusAddress(path, bus_name=destination, interface=interface),
                              member, signature or None, tuple(body))
        data = bytearray(msg.serialise(serial=1))
        if data[0] != b"l"[0]:
            raise RuntimeError("expected a little-endian call template")
        return data

    def send_template(self, template: bytearray) -> int:
        serial = self.next_serial()
        SEQ.pack_into(template, 8, serial)
        self.sock.sendall(template)
        return serial

    def wait_reply(self, serial: int) -> RawMessage:
        """The reply to ``serial``; other messages are skipped. Raises on an error reply."""
        needle = b"\x05\x01u\x00"
        while True:
            msg = self.receive()
            if msg.mtype not in (MSG_METHOD_RETURN, MSG_ERROR):
                continue
            data = msg.data
            at = data.find(needle, 16, msg.fields_end)
            if at >= 0 and at % 8 == 0:
                reply_serial = U32[data[0]].unpack_from(data, at + 4)[0]
            else:
                reply_serial = parse_fields(msg).get(FIELD_REPLY_SERIAL)
            if reply_serial != serial:
                continue
            if msg.mtype == MSG_ERROR:
                name = parse_fields(msg).get(FIELD_ERROR_NAME, "?")
                raise RuntimeError(f"D-Bus error reply: {name}")
            return msg

    def call(self, destination: str, path: str, interface: str, member: str,
             signature: str = "", body: Sequence[Any] = ()) -> tuple[Any, ...]:
        """A decoded call for setup work (not on any measured path)."""
        from jeepney.low_level import Parser

        serial = self.send_template(
            self.template(destination, path, interface, member, signature, body))
        msg = self.wait_reply(serial)
        parser = Parser()
        parser.add_data(msg.data)
        decoded = parser.get_next_message()
        return tuple(decoded.body)

    def call_bus(self, member: str, signature: str = "", body: Sequence[Any] = ()) -> Any:
        reply = self.call(BUS_NAME, BUS_PATH, BUS_NAME, member, signature, body)
        return reply[0] if reply else None

    def round_trips(self, template: bytearray, count: int,
                    check: Callable[[RawMessage], None] | None = None) -> list[int]:
        """``count`` sequential calls; the latency of each in nanoseconds."""
        samples: list[int] = []
        clock = time.perf_counter_ns
        send, wait = self.send_template, self.wait_reply
        for _ in range(count):
            start = clock()
            reply = wait(send(template))
            samples.append(clock() - start)
            if check is not None:
                check(reply)
        return samples

    # -- signals --------------------------------------------------------------
    def receive_burst(self, burst_serial: int, count: int, *, start_timeout: float,
                      idle_timeout: float) -> BurstResult:
        """Count PropertiesChanged sequence numbers until all arrived or the bus is idle."""
        seen = bytearray(count)
        received = duplicates = gaps = 0
        last_seq = -1
        first_ns: int | None = None
        last_ns: int | None = None
        acked = False
        error = ""
        fast_len = -1
        fast_off = 0
        clock = time.perf_counter_ns
        self.set_timeout(start_timeout)
        while received < count:
            if self._pos >= len(self._buf) and not self._fill():
                break
            now = clock()
            buf = self._buf
            pos = self._pos
            end_buf = len(buf)
            got_one = False
            while end_buf - pos >= 16:
                body_len, _serial, fields_len = HEADER[buf[pos]].unpack_from(buf, pos + 4)
                body_start = pos + ((16 + fields_len + 7) & -8)
                end = body_start + body_len
                if end > end_buf:
                    break
                mtype = buf[pos + 1]
                seq = -1
                if mtype == MSG_SIGNAL and body_len == fast_len:
                    seq = SEQ.unpack_from(buf, body_start + fast_off)[0]
                else:
                    msg = RawMessage(mtype, buf[pos:end], 16 + fields_len, body_start - pos)
                    if mtype == MSG_SIGNAL:
                        fields = parse_fields(msg)
                        found = value_offset(msg) if (
                            fields.get(FIELD_MEMBER) == "PropertiesChanged"
                            and fields.get(FIELD_SIGNATURE) == "sa{sv}as") else None
                        if found is not None and found[2] == VALUE_LEN:
                            fast_len, fast_off = body_len, found[1]
                            seq = SEQ.unpack_from(buf, body_start + fast_off)[0]
                    elif mtype in (MSG_METHOD_RETURN, MSG_ERROR):
                        fields = parse_fields(msg)
                        if fields.get(FIELD_REPLY_SERIAL) == burst_serial:
                            acked = mtype == MSG_METHOD_RETURN
                            if not acked:
                                error = str(fields.get(FIELD_ERROR_NAME, "error"))
                pos = end
                if seq < 0:
                    continue
                got_one = True
                if seq < count and not seen[seq]:
                    seen[seq] = 1
                    received += 1
                else:
                    duplicates += 1
                if seq != last_seq + 1:
                    gaps += 1
                last_seq = seq
            self._pos = pos
            if got_one:
                if first_ns is None:
                    first_ns = now
                    self.set_timeout(idle_timeout)
                last_ns = now
        self.set_timeout(self._default_timeout)
        return BurstResult(count, received, duplicates, gaps, acked, error, first_ns, last_ns)

