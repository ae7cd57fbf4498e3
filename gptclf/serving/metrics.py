"""The server's Prometheus metrics (prometheus-client), one set per application.

With ``--workers N`` every worker process counts in files under ``PROMETHEUS_MULTIPROC_DIR`` (set by
the parent) and ``/metrics`` adds up all of them, so whichever worker answers a scrape reports the
whole server.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Request latency buckets (seconds): a tiny model answers in milliseconds, a big batch in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Batch-size buckets (texts per forward pass).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The counters, histograms and gauge of one server.

    Attributes:
        requests: Requests by endpoint and HTTP status.
        texts: Texts classified.
        latency: Request latency by endpoint.
        batch_size: Texts per batch run through the model.
        queue_depth: Texts waiting for a batch.
    """

    def __init__(self, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gptclf_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.texts = Counter("gptclf_texts_classified", "Texts classified", registry=r)
        self.latency = Histogram(
            "gptclf_request_duration_seconds",
            "Request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "gptclf_batch_size_texts",
            "Texts per batch run through the model",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "gptclf_queue_depth_texts", "Texts waiting for a batch", registry=r, multiprocess_mode="livesum"
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition (every worker's, with ``--workers``) and its content type."""
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
