"""Prometheus metrics, all named ``heke_*``, in a registry of the app's own.

A registry per app (not prometheus-client's global one) keeps two apps in one process, as in
the tests or a Ray replica, from counting into each other.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a short clip on a GPU to a long 4K file on a CPU.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 150, 300, 600)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "heke_requests", "HTTP requests by route and status code", ["route", "code"], registry=r
        )
        self.latency = Histogram(
            "heke_request_latency_seconds",
            "Time from request to answer, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "heke_queue_depth", "Videos admitted and not yet answered (--max-queue)", registry=r
        )
        self.batch_size = Histogram(
            "heke_batch_size", "Snippets per engine call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_videos = Histogram(
            "heke_batch_videos",
            "Videos whose snippets shared one engine call",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.videos_scored = Counter("heke_videos_scored", "Videos scored", registry=r)
        self.decode_failures = Counter(
            "heke_decode_failures", "Videos that could not be decoded", registry=r
        )

    def observe_batch(self, snippets: int, videos: int) -> None:
        self.batch_size.observe(snippets)
        self.batch_videos.observe(videos)

    def text(self) -> bytes:
        return generate_latest(self.registry)
