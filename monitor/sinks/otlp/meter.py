"""The monitor's metrics (monitor/sinks/metrics.py) on an OpenTelemetry meter."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider

from monitor.sinks import metrics as m


class OtelMetrics(m.MetricsRecorder):
    """Counters are kept as plain totals and reported by observable counters at collection time:
    an SDK `Counter.add` per event would cost more than judging the event."""

    def __init__(self, provider: MeterProvider, export_stats: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        super().__init__()
        from opentelemetry.metrics import Observation
        meter = provider.get_meter("sandbox-monitor")
        self._histograms: dict[m.MetricDef, Any] = {}
        self._counts: dict[m.MetricDef, dict[tuple[str, ...], float]] = {}
        self._counts_lock = threading.Lock()
        self.add_export_source(export_stats)

        def observe(read: Callable[[], Mapping[tuple[str, ...], float]], metric: m.MetricDef) -> Callable[[Any], list[Any]]:
            return lambda _options: [Observation(value, dict(zip(metric.labels, labels, strict=True)))
                                     for labels, value in read().items()]

        for metric in m.METRICS:
            read: Callable[[], Mapping[tuple[str, ...], float]]
            if metric.kind == m.HISTOGRAM:
                self._histograms[metric] = meter.create_histogram(
                    metric.name, metric.unit, metric.description,
                    explicit_bucket_boundaries_advisory=metric.buckets)
                continue
            if metric.kind == m.COUNTER:
                self._counts[metric] = {}
                read = (lambda metric=metric: self._copy_counts(metric))  # noqa: E731
            elif metric is m.SANDBOXES_WATCHED:
                read = lambda: {(k,): v for k, v in self.sandboxes_by_runtime().items()}  # noqa: E731
            elif metric in (m.LOST_EVENTS, m.RULE_ERRORS):
                read = (lambda metric=metric: self.observed_totals(metric))  # noqa: E731
            else:  # export metrics
                read = (lambda metric=metric: self.export_readings()[metric])  # noqa: E731
            create = meter.create_observable_gauge if metric.kind == m.GAUGE else meter.create_observable_counter
            create(metric.name, [observe(read, metric)], metric.unit, metric.description)

    def _copy_counts(self, metric: m.MetricDef) -> dict[tuple[str, ...], float]:
        with self._counts_lock:
            return dict(self._counts[metric])

    def _add(self, metric: m.MetricDef, labels: tuple[str, ...], amount: float = 1) -> None:
        totals = self._counts[metric]
        with self._counts_lock:
            totals[labels] = totals.get(labels, 0) + amount

    def _observe(self, metric: m.MetricDef, labels: tuple[str, ...], value: float) -> None:
        self._histograms[metric].record(value, dict(zip(metric.labels, labels, strict=True)))
