"""The benchmarks: one harness shared by every benchmark program.

``stats`` (the one percentile and latency-summary definition), ``results``
(the one JSON report schema, written under ``bench-results/``), ``wire``,
``server`` and ``children`` (the one child-process protocol, server and parent
side; ``lifeline`` ends a server with its parent), ``procfs`` (per-process CPU
and memory from ``/proc``), and the benchmarks themselves: ``peripheral``,
``suite`` (``mushpi-ble bench``), ``peer``, ``hostile``, ``notify_paths``,
``facade_ab`` and ``dbus_layer`` (with its ``dbus_*`` and ``raw_*`` parts).
Everything here ships in the wheel, so ``mushpi-ble bench`` needs no source
checkout. Benchmarks may import ``mushpi_ble.testing`` (the fakes); nothing
else in the product does.
"""

UNPACED = {"MUSHPI_BLE_NOTIFY_INTERVAL_MS": "0", "MUSHPI_BLE_BACKPRESSURE_POLICY": "drop_oldest"}
"""The settings of every benchmark that measures what a notification path can carry,
not the pacing and thinning the product applies by default (every value is offered to
the path, none coalesced away; ``--hostile`` and ``facade_ab`` run as shipped)."""
