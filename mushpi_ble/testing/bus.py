"""A private ``dbus-daemon`` for tests, demos and benchmarks.

Runs a bus of its own in a temporary directory with a permissive policy
(any connection may own any name), so nothing touches the machine's
system bus and no Bluetooth or root rights are needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
{policy}
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_message_size">33554432</limit>
  <limit name="reply_timeout">300000</limit>
  <limit name="max_replies_per_connection">50000</limit>
  <limit name="max_connections_per_user">4096</limit>
  <limit name="max_match_rules_per_connection">4096</limit>
</busconfig>
"""


PERMISSIVE = """  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>"""

SYSTEM_LIKE = """  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>"""
"""The default policy of Debian's system.conf: nobody owns names or calls methods
unless a policy file allows it."""


class DBusDaemonMissing(RuntimeError):
    """dbus-daemon is not installed (Debian package ``dbus-daemon``)."""


@contextmanager
def private_bus(startup_timeout: float = 10.0, *,
                system_policy: str | None = None) -> Iterator[str]:
    """Start a private dbus-daemon; yields its address, stops it on exit.

    ``system_policy``: the system bus's default policy instead of the permissive
    one, with this policy file (the text of a ``system.d`` file) added; "" adds none.
    """
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        raise DBusDaemonMissing(
            "dbus-daemon not found: install the Debian package 'dbus-daemon'"
        )
    with tempfile.TemporaryDirectory(prefix="mushpi-bus-") as tmp:
        socket_path = Path(tmp) / "bus"
        config = Path(tmp) / "bus.conf"
        policy = PERMISSIVE
        if system_policy is not None:
            policy = SYSTEM_LIKE
            if system_policy:
                extra = Path(tmp) / "policy.conf"
                extra.write_text(system_policy)
                policy += f"\n  <include>{extra}</include>"
        config.write_text(CONFIG.format(socket=socket_path, policy=policy))
        proc = subprocess.Popen(
            [daemon, f"--config-file={config}", "--nofork", "--print-address"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DBUS_VERBOSE": "0"},
        )
        try:
            assert proc.stdout is not None
            address = proc.stdout.readline().strip()
            deadline = time.monotonic() + startup_timeout
            while not socket_path.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read() if proc.stderr else ""
                    raise RuntimeError(f"dbus-daemon did not start: {err.strip()}")
                time.sleep(0.01)
            yield address or f"unix:path={socket_path}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
