"""`GET /metrics`: request counts by route and status, a latency histogram by route, and
the query cache's hit rate, in Prometheus' text format (prometheus-client)."""
from __future__ import annotations

import time

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401 - re-exported for the app
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

prometheus_client.disable_created_metrics()  # no `_created` series: counts and latencies only

BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    """The service's counters, in a registry of its own (several apps in one process
    do not share them)."""

    def __init__(self, cache_stats):
        self.registry = CollectorRegistry()
        self.requests = Counter("workflow_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("workflow_request_seconds", "request latency by route",
                                 ["route"], buckets=BUCKETS, registry=self.registry)
        self.batch = Histogram("workflow_search_batch_queries", "queries answered by one "
                               "search call (micro-batching)", buckets=(1, 2, 4, 8, 16, 32, 64),
                               registry=self.registry)
        hit_rate = Gauge("workflow_query_cache_hit_rate", "query cache hits / lookups",
                         registry=self.registry)
        hit_rate.set_function(lambda: cache_stats()["hit_rate"])
        size = Gauge("workflow_query_cache_entries", "results held in the query cache",
                     registry=self.registry)
        size.set_function(lambda: cache_stats()["size"])

    def text(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware that counts every HTTP request by its route template (so that
    `/image/123` counts as `/image/{image_id}`) and final status."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        status = [500]

        async def sent(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sent)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or ("/static" if scope["path"].startswith(
                "/static/") else "unmatched")
            self.metrics.requests.labels(name, str(status[0])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - t)
