"""``GET /metrics``: the worker's running totals in Prometheus' text format (``prometheus-client``).

Each server builds its own :class:`~prometheus_client.CollectorRegistry` with one :class:`TalliesCollector`
(:func:`metrics_registry`), so several servers in one process (tests) never share or clash. The collector reads
one consistent snapshot of :class:`~parakeet_worker.observability.tallies.Tallies` per scrape:

============================================  =========  ====================================================
``parakeet_sessions_active``                  gauge      live sessions, by ``face``
``parakeet_sessions_opened_total``            counter    sessions admitted since start, by ``face``
``parakeet_requests_total``                   counter    HTTP requests and WebSocket handshakes answered, by
                                                         ``face``, ``route`` and ``status`` (101: accepted)
``parakeet_finished_total``                   counter    finished batch requests and sessions, by ``face``,
                                                         ``kind`` and ``outcome`` (ok | error)
``parakeet_audio_seconds_total``              counter    audio heard, by ``face``
``parakeet_errors_total``                     counter    failed requests and sessions, by ``face`` and ``code``
``parakeet_queue_wait_seconds``               histogram  time a batch request waited for the engine, by ``face``
``parakeet_inference_seconds``                histogram  model time per batch request, by ``face``
============================================  =========  ====================================================
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from parakeet_worker.observability.metrics import Metrics
from parakeet_worker.observability.tallies import HistogramSnapshot


def _buckets(histogram: HistogramSnapshot) -> list[tuple[str, float]]:
    """Prometheus' cumulative buckets, ``+Inf`` last."""
    out, running = [], 0
    for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return out


class TalliesCollector(Collector):
    """A custom collector over one :class:`Metrics` object's tallies."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics.tallies.snapshot()
        families: tuple[tuple[type[GaugeMetricFamily] | type[CounterMetricFamily], str, str, list[str],
                              Mapping[Any, float]], ...] = (
            (GaugeMetricFamily, "parakeet_sessions_active", "Live sessions", ["face"], snap.sessions_active),
            (CounterMetricFamily, "parakeet_sessions_opened", "Sessions admitted since start", ["face"],
             snap.sessions_opened),
            (CounterMetricFamily, "parakeet_requests", "HTTP requests and WebSocket handshakes answered",
             ["face", "route", "status"], snap.requests),
            (CounterMetricFamily, "parakeet_finished", "Finished batch requests and sessions",
             ["face", "kind", "outcome"], snap.finished),
            (CounterMetricFamily, "parakeet_audio_seconds", "Audio heard, seconds", ["face"], snap.audio_seconds),
            (CounterMetricFamily, "parakeet_errors", "Failed requests and sessions by error code", ["face", "code"],
             snap.errors),
        )
        for kind, name, doc, labels, values in families:
            family = kind(name, doc, labels=labels)
            for key, n in sorted(values.items()):
                family.add_metric(list(key) if isinstance(key, tuple) else [key], n)
            yield family
        for name, doc, histograms in (
                ("parakeet_queue_wait_seconds", "Time a request waited for the engine", snap.queue_wait),
                ("parakeet_inference_seconds", "Model time per request", snap.inference)):
            timing = HistogramMetricFamily(name, doc, labels=["face"])
            for face, histogram in sorted(histograms.items()):
                timing.add_metric([face], _buckets(histogram), sum_value=histogram.total)
            yield timing


def metrics_registry(metrics: Metrics) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one) holding the collector over ``metrics``."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(TalliesCollector(metrics))
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry's samples in the format the scraper's ``Accept`` header asks for: (body, content type)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
