"""The service's Prometheus metrics, in a registry of its own (not the process-wide default one)."""
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ['CONTENT_TYPE_LATEST', 'ServiceMetrics']

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """Requests by endpoint and status, `/predict` latency, batch sizes, forward time and queue depth."""

    def __init__(self, queue_depth: Callable[[], float]):
        self.registry = CollectorRegistry()
        self.requests = Counter('cmtnet_requests', 'HTTP requests answered, by endpoint and status',
                                ['endpoint', 'status'], registry=self.registry)
        self.latency = Histogram('cmtnet_request_seconds', 'time to answer a request, by endpoint', ['endpoint'],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram('cmtnet_batch_size', 'images per forward', buckets=_BATCH_BUCKETS,
                                    registry=self.registry)
        self.forward = Histogram('cmtnet_batch_seconds', 'time of one forward', buckets=_LATENCY_BUCKETS,
                                 registry=self.registry)
        self.queue = Gauge('cmtnet_queue_depth', 'requests admitted and not yet in a running batch',
                           registry=self.registry)
        self.queue.set_function(queue_depth)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.forward.observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
