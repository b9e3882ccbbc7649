"""Prometheus metrics of one server: requests by route and status, latency, batch sizes, queue depth.

Each app gets its own registry, so several servers (or tests) in one process
never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # the *_created series only double the output

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("imgclf_requests", "HTTP requests by route and status code.", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("imgclf_request_duration_seconds", "Time to answer a request, by route.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("imgclf_images", "Images classified.", registry=self.registry)
        self.batch_size = Histogram("imgclf_batch_size", "Images per model call (dynamic batching).",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue = Gauge("imgclf_queue_images", "Images waiting for or in a model call.", registry=self.registry)
        # --log: every prediction is a row; these say how many reached the log and how many did not, and why
        self.log_rows = Counter("imgclf_log_rows", "Prediction log rows: written, dropped (its queue was full) or "
                                "failed (the database could not be written).", ["outcome"], registry=self.registry)
        self.log_queue = Gauge("imgclf_log_queue_rows", "Prediction log rows waiting to be written.",
                               registry=self.registry)

    def count_log_rows(self, outcome: str, rows: int) -> None:
        """The prediction log's writer reports here (``outcome``: written, dropped or failed)."""
        self.log_rows.labels(outcome).inc(rows)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def text(self) -> bytes:
        """The Prometheus text exposition format."""
        return generate_latest(self.registry)
