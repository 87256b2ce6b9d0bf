"""Prometheus export of ``get_status()``: an HTTP endpoint or a textfile.

Fleets of Pis are usually watched by node_exporter; its textfile collector
reads ``*.prom`` files, so ``MUSHPI_BLE_METRICS_FILE`` writes one
atomically every few seconds. ``MUSHPI_BLE_METRICS_PORT`` serves the same
metrics over HTTP on ``MUSHPI_BLE_METRICS_BIND`` (127.0.0.1 by default).
Needs the ``metrics`` extra (prometheus-client).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from . import __version__
from .config import Settings
from .gatt import BLUEZ_AFFECTED
from .metrics import LatencyHistogram

log = logging.getLogger(__name__)

try:
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        ProcessCollector,
        start_http_server,
        write_to_textfile,
    )
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "metrics export needs the 'metrics' extra: pip install 'mushpi-ble[metrics]'"
    ) from exc

PREFIX = "mushpi_ble"
FILE_INTERVAL_S = 10.0

StatusSource = Callable[[], Mapping[str, Any]]
HistogramSource = Callable[[], Mapping[str, LatencyHistogram]]


class StatusCollector:
    """Turns a ``get_status()`` snapshot into Prometheus metric families."""

    def __init__(self, status: StatusSource, histograms: HistogramSource) -> None:
        self._status = status
        self._histograms = histograms

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        for key, help_text in (("running", "1 while the peripheral runs"),
                               ("registered", "1 while the GATT application is registered"),
                               ("advertising", "1 while the advertisement is registered")):
            yield GaugeMetricFamily(f"{PREFIX}_{key}", help_text, value=int(bool(status[key])))
        yield GaugeMetricFamily(f"{PREFIX}_connected_centrals", "centrals connected now",
                                value=status["connection_count"])
        for key, help_text in (("connects", "central connections seen"),
                               ("disconnects", "central disconnections seen"),
                               ("restarts", "bluetoothd restarts survived")):
            yield CounterMetricFamily(f"{PREFIX}_{key}", help_text, value=status[key])
        if "left_waiting" in status:  # the backend's own status (bluezero) has none
            yield CounterMetricFamily(
                f"{PREFIX}_phones_left_waiting",
                "Phones that left while a read or write of theirs was being answered "
                f"(bluetoothd, {BLUEZ_AFFECTED}, may crash about 5 s later).",
                value=status["left_waiting"]["phones"])
        yield from _unattended(status)
        characteristics = status["characteristics"].items()
        yield from _labelled_counters(
            "notifications_{}",
            {key: f"payloads {key}, per characteristic"
             for key in ("offered", "sent", "dropped", "coalesced", "notified")},
            "characteristic", characteristics)
        pending = GaugeMetricFamily(f"{PREFIX}_notifications_pending",
                                    "payloads queued or being sent", labels=["characteristic"])
        for char, c in characteristics:
            pending.add_metric([char], c["pending"])
        yield pending
        if "pairing" in status:
            yield from _pairing_metrics(status["pairing"])
        if "access" in status:
            yield from _access_metrics(status["access"])
        latency = HistogramMetricFamily(f"{PREFIX}_publish_latency_seconds",
                                        "offer-to-emit latency of notifications",
                                        labels=["characteristic"])
        for char, histogram in self._histograms().items():
            buckets = [(_bound(b), float(n)) for b, n in histogram.buckets()]
            _count, total = histogram.total
            latency.add_metric([char], buckets, total)
        yield latency
        yield from _callback_metrics(status.get("callbacks", {}))
        yield from _notify_metrics(status.get("notify", {}), phone_labels(status))
        yield InfoMetricFamily(f"{PREFIX}_build", "The running mushpi_ble",
                               value={"version": __version__,
                                      "backend": str(status.get("backend", ""))})


ANONYMOUS = "anonymous"


def phone_labels(status: Mapping[str, Any]) -> dict[str, str]:
    """A phone's label: its identity address when bonded, else "anonymous". A device
    path names a (possibly private, rotating) address: one series per address would grow
    without bound and name strangers' phones in the metrics."""
    bonded = (status.get("pairing") or {}).get("bonded_devices") or []
    return {d["path"]: d["address"] for d in bonded if d.get("address")}


def _labelled_counters(name: str, helps: Mapping[str, str], label: str,
                       rows: Iterable[tuple[str, Mapping[str, Any]]]) -> Sequence[Metric]:
    """A counter family per key of ``helps`` (``name`` formatted with the key, its help
    text the value), one sample per row labelled with the row's name."""
    families = [CounterMetricFamily(f"{PREFIX}_{name.format(key)}", help_text, labels=[label])
                for key, help_text in helps.items()]
    for value, row in rows:
        for key, family in zip(helps, families, strict=True):
            family.add_metric([value], row[key])
    return families


PHONE_COUNTERS = ("sent", "dropped", "coalesced", "refused", "confirmations")


def _by_phone(notify: Mapping[str, Any], labels: Mapping[str, str]) -> list[
        tuple[str, dict[str, Any]]]:
    """The phones' socket figures by label; unbonded phones add up under "anonymous"
    (their MTU is the largest of them)."""
    rows: dict[str, dict[str, Any]] = {}
    for device, entry in notify.get("phones", {}).items():
        row = rows.setdefault(labels.get(device, ANONYMOUS),
                              {**dict.fromkeys(PHONE_COUNTERS, 0), "queue_depth": 0, "mtu": 0})
        for key in (*PHONE_COUNTERS, "queue_depth"):
            row[key] += entry[key]
        row["mtu"] = max(row["mtu"], entry["mtu"])
    return sorted(rows.items())


def _notify_metrics(notify: Mapping[str, Any], labels: Mapping[str, str]) -> Iterator[Metric]:
    """Notify sockets: per phone its queue and counters; per characteristic the losses."""
    phones = _by_phone(notify, labels)
    yield from _labelled_counters(
        "phone_notifications_{}",
        {key: f"Notifications {key} by a phone's notify sockets (bonded: by identity "
              "address; others together as anonymous)" for key in PHONE_COUNTERS},
        "phone", phones)
    depth = GaugeMetricFamily(f"{PREFIX}_phone_queue_depth",
                              "Values waiting for a phone's notify sockets", labels=["phone"])
    mtu = GaugeMetricFamily(f"{PREFIX}_phone_mtu_bytes", "A phone's ATT MTU",
                            labels=["phone"])
    for phone, entry in phones:
        depth.add_metric([phone], entry["queue_depth"])
        mtu.add_metric([phone], entry["mtu"])
    yield depth
    yield mtu
    losses = CounterMetricFamily(f"{PREFIX}_notify_socket_losses",
                                 "notify sockets closed under a still-connected phone",
                                 labels=["characteristic"])
    on_signals = GaugeMetricFamily(f"{PREFIX}_notify_on_signals",
                                   "1 while a characteristic notifies by signals",
                                   labels=["characteristic"])
    for name, entry in sorted(notify.get("characteristics", {}).items()):
        losses.add_metric([name], entry["socket_losses"])
        on_signals.add_metric([name], int(entry["path"] == "signal"))
    yield losses
    yield on_signals


def _callback_metrics(callbacks: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Per controller callback: running or hung now, and its counters."""
    in_flight = GaugeMetricFamily(f"{PREFIX}_callback_in_flight",
                                  "1 while a call of the controller callback runs",
                                  labels=["callback"])
    hung = GaugeMetricFamily(f"{PREFIX}_callback_hung",
                             "1 while a call runs past the handler deadline",
                             labels=["callback"])
    for name, entry in callbacks.items():
        in_flight.add_metric([name], int(bool(entry["in_flight"])))
        hung.add_metric([name], int(entry["hung_since"] is not None))
    yield in_flight
    yield hung
    yield from _labelled_counters(
        "callback_{}",
        {"calls": "calls of the controller callback started",
         "joined": "requests answered by a call already running",
         "timeouts": "requests not answered within the deadline",
         "hangs": "calls that ran past the handler deadline"},
        "callback", callbacks.items())


ADAPTER_STATES = ("on", "off", "off-enabling", "on-disabling", "off-blocked", "removed",
                  "unknown")


def _unattended(status: Mapping[str, Any]) -> Iterator[Metric]:
    """The adapter's state and recoveries, and the advert's health."""
    current = status.get("adapter_state", "unknown")
    state = GaugeMetricFamily(f"{PREFIX}_adapter_state",
                              "1 for the adapter's current state (bluetoothd's PowerState)",
                              labels=["state"])
    for name in (*ADAPTER_STATES, *(() if current in ADAPTER_STATES else (current,))):
        state.add_metric([name], int(name == current))
    yield state
    recoveries = CounterMetricFamily(f"{PREFIX}_adapter_recoveries",
                                     "steps taken about the adapter, by action and result",
                                     labels=["action", "result"])
    for key, count in sorted(status.get("recovery_totals", {}).items()):
        action, _, result = key.partition(":")
        recoveries.add_metric([action, result], count)
    yield recoveries
    yield GaugeMetricFamily(f"{PREFIX}_advert_alias_only",
                            "1 while bluetoothd refuses the advertisement (see advert_problem)",
                            value=int(status.get("advert_state") == "alias-only"))
    yield CounterMetricFamily(f"{PREFIX}_advert_refusals",
                              "advertisement registrations bluetoothd refused",
                              value=status.get("advert_refusals", 0))
    yield CounterMetricFamily(f"{PREFIX}_advert_drops",
                              "advertisements bluetoothd dropped without a Release",
                              value=status.get("advert_drops", 0))


def _pairing_metrics(pairing: Mapping[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(f"{PREFIX}_pairing_agent_registered",
                            "1 while our pairing agent is bluetoothd's default agent",
                            value=int(bool(pairing["agent_registered"])))
    yield CounterMetricFamily(f"{PREFIX}_pairing_requests", "pairing requests from bluetoothd",
                              value=pairing["requests"])
    outcomes = CounterMetricFamily(f"{PREFIX}_pairing_outcomes",
                                   "pairing attempts by what became of them",
                                   labels=["outcome"])
    for outcome in ("accepted", "rejected", "canceled", "paired", "failed"):
        outcomes.add_metric([outcome], pairing[outcome])
    yield outcomes
    yield GaugeMetricFamily(f"{PREFIX}_bonded_devices", "devices bonded with the adapter",
                            value=len(pairing["bonded_devices"]))


def _access_metrics(access: Mapping[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(f"{PREFIX}_write_access_bonded",
                            "1 when only bonded phones may write (MUSHPI_BLE_WRITE_ACCESS)",
                            value=int(access["write"] == "bonded"))
    yield GaugeMetricFamily(f"{PREFIX}_read_access_bonded",
                            "1 when only bonded phones may read (MUSHPI_BLE_READ_ACCESS)",
                            value=int(access["read"] == "bonded"))
    yield GaugeMetricFamily(f"{PREFIX}_pairing_window_open", "1 while new phones may pair",
                            value=int(bool(access["window_open"])))
    yield GaugeMetricFamily(f"{PREFIX}_unapproved_bonds",
                            "bonds bluetoothd has that our agent did not admit and the grower "
                            "has not approved (bonded access refuses them)",
                            value=access.get("unapproved_bonds", 0))
    refused = CounterMetricFamily(f"{PREFIX}_access_refused",
                                  "requests refused before the controller, by reason",
                                  labels=["reason"])
    for reason, count in access["refused"].items():
        refused.add_metric([reason], count)
    yield refused


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


class MetricsExporter:
    """Serves and/or writes the metrics until :meth:`close`."""

    def __init__(self, collector: StatusCollector, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self._settings = settings
        self._server: Any = None
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self.port: int | None = None
        ProcessCollector(registry=self.registry)
        self.failures = Counter(f"{PREFIX}_metrics_failures", "Metrics that could not be "
                                "served or written (the service runs on without them)",
                                ["what"], registry=self.registry)
        self._file_failing = False

    def start(self) -> None:
        """Serve and/or start writing; a port in use is logged and counted, never fatal:
        metrics are not worth a grow room's BLE."""
        s = self._settings
        if s.ble_metrics_port is not None:
            try:
                self._server, _thread = start_http_server(
                    s.ble_metrics_port, s.ble_metrics_bind, registry=self.registry)
            except OSError as exc:
                self.failures.labels("serve").inc()
                log.error("metrics not served bind=%s port=%d error=%s (MUSHPI_BLE_METRICS_PORT);"
                          " running without them", s.ble_metrics_bind, s.ble_metrics_port, exc)
            else:
                self.port = int(self._server.server_port)
                log.info("metrics served bind=%s port=%d", s.ble_metrics_bind, self.port)
        if s.ble_metrics_file is not None:
            self._writer = threading.Thread(target=self._write_loop, name="mushpi-ble-metrics",
                                            daemon=True)
            self._writer.start()
            log.info("metrics written path=%s every_s=%.0f", s.ble_metrics_file,
                     FILE_INTERVAL_S)

    def write_file(self) -> bool:
        """One write; a failure is counted and logged when it starts and when it ends
        (not every 10 s), never raised."""
        path = self._settings.ble_metrics_file
        if path is None:
            return True
        try:
            write_to_textfile(str(path), self.registry)
        except OSError as exc:
            self.failures.labels("file").inc()
            if not self._file_failing:
                log.error("metrics file not written path=%s error=%s (MUSHPI_BLE_METRICS_FILE)",
                          path, exc)
            self._file_failing = True
            return False
        if self._file_failing:
            log.info("metrics file written again path=%s", path)
        self._file_failing = False
        return True

    def _write_loop(self) -> None:
        while True:
            self.write_file()
            if self._stop.wait(FILE_INTERVAL_S):
                return

    def close(self) -> None:
        """Stop serving and write the last values; never raises."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join(2)
            self.write_file()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def exporter_for(portal: Any) -> MetricsExporter | None:
    """An exporter for a :class:`~mushpi_ble.portal.BlePortal`, or None when not configured."""
    settings: Settings = portal.settings
    if settings.ble_metrics_port is None and settings.ble_metrics_file is None:
        return None
    collector = StatusCollector(
        portal.get_status,
        lambda: {name: box.latency for name, box in portal.service.mailboxes.items()},
    )
    return MetricsExporter(collector, settings)


__all__ = ["MetricsExporter", "StatusCollector", "exporter_for"]
