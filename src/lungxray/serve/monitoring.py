"""Prometheus metrics for the server: requests, latency, queue depth, OOD rate, scores and drift.

``prometheus_client`` is imported lazily (the ``serve`` extra), and every ``Monitoring`` owns a private
``CollectorRegistry``, so two apps (or two tests) in one process never share or clash on metrics.
Wiring it into an app takes a few lines::

    mon = Monitoring(drift=DriftMonitor(val_features))        # val_features: (N, 2) ood_distance, score
    app.add_middleware(MonitoringMiddleware, monitoring=mon)   # or wrap: MonitoringMiddleware(app, mon)
    mon.observe_prediction(pred.ood_score, pred.ood, pred.score)  # after each prediction
    @app.get("/metrics")
    def metrics(): body, ctype = mon.render(); return Response(body, media_type=ctype)

Exported series (prefix ``lungxray_``): ``requests_total{route,status}``, ``request_seconds{route}``
(histogram), ``queue_depth``, ``predictions_total``, ``ood_flagged_total``, ``gate_flagged_total`` (OOD rate =
ood_flagged_total / predictions_total), ``score`` and ``ood_distance`` (histograms), ``drift``
(1 while the drift check fires, else 0) and ``drift_p_value``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from lungxray.evaluation.shift import DriftMonitor, ShiftResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
DISTANCE_BUCKETS = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 75.0, 100.0, 200.0)


class Monitoring:
    """The server's metrics in a private registry; cheap to call from request handlers (thread-safe).

    Args:
        drift: a ``DriftMonitor`` fed by ``observe_prediction``; None disables the drift gauge.
        prefix: metric name prefix.
    """

    def __init__(self, drift: DriftMonitor | None = None, prefix: str = "lungxray"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r, p = self.registry, prefix
        self.requests = Counter(
            f"{p}_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            f"{p}_request_seconds", "Request latency by route", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(f"{p}_queue_depth", "Images waiting for the model", registry=r)
        self.predictions = Counter(f"{p}_predictions", "Images predicted", registry=r)
        self.ood_flagged = Counter(f"{p}_ood_flagged", "Images flagged out of distribution", registry=r)
        self.gate_flagged = Counter(
            f"{p}_gate_flagged", "Images the population gate flagged as unlike the training population", registry=r
        )
        self.scores = Histogram(
            f"{p}_score", "Model score of predicted images", buckets=SCORE_BUCKETS, registry=r
        )
        self.ood_distance = Histogram(
            f"{p}_ood_distance",
            "Mahalanobis OOD distance of predicted images",
            buckets=DISTANCE_BUCKETS,
            registry=r,
        )
        self.drift_gauge = Gauge(f"{p}_drift", "1 while the drift check fires, else 0", registry=r)
        self.drift_p = Gauge(
            f"{p}_drift_p_value", "p-value of the last drift check (NaN before one)", registry=r
        )
        self.drift_p.set(math.nan)
        self.monitor = drift

    def observe_request(self, route: str, status: int | str, seconds: float) -> None:
        """Count one finished request and its latency. ``route`` is the route template, not the raw path."""
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(max(0.0, float(seconds)))

    def observe_prediction(
        self, ood_distance: float | None, ood_flag: bool | None, score: float | None, gate_flag: bool = False
    ) -> None:
        """Record one predicted image (None values, e.g. a run without OOD statistics, are skipped);
        ``gate_flag``: the attached population gate flagged it (``lungxray.gate``)."""
        self.predictions.inc()
        if ood_flag:
            self.ood_flagged.inc()
        if gate_flag:
            self.gate_flagged.inc()
        if score is not None and math.isfinite(score):
            self.scores.observe(float(score))
        if ood_distance is not None and math.isfinite(ood_distance):
            self.ood_distance.observe(float(ood_distance))
        if self.monitor is not None:
            self.monitor.update(ood_distance, score)

    def set_queue_depth(self, n: int) -> None:
        """Set the number of images waiting for the model."""
        self.queue_depth.set(n)

    def drift(self) -> ShiftResult | None:
        """Run the drift check on the recent window and update the gauges; None when it cannot run yet.

        For ``/health`` and the page header: ``r = mon.drift(); if r and r.fired: warn(r.summary)``.
        """
        result = None if self.monitor is None else self.monitor.check()
        self.drift_gauge.set(1.0 if result is not None and result.fired else 0.0)
        self.drift_p.set(math.nan if result is None else result.p_value)
        return result

    def render(self) -> tuple[bytes, str]:
        """``(body, content_type)`` of the Prometheus text exposition, drift check refreshed first."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.drift()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MonitoringMiddleware:
    """Pure ASGI middleware: times every HTTP request and counts it by route template and status.

    The route label is the matched route's template (``scope["route"].path``, set by Starlette's
    router) so ``/runs/{name}`` stays one series; unmatched paths count as ``"other"`` to keep the
    label set bounded. A request that raises counts as status 500 and the error propagates.
    """

    def __init__(self, app: Any, monitoring: Monitoring):
        self.app = app
        self.monitoring = monitoring

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}
        start = time.perf_counter()

        async def send_wrapper(message: dict) -> None:
            if message.get("type") == "http.response.start":
                status["code"] = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "other"
            self.monitoring.observe_request(label, status["code"], time.perf_counter() - start)
