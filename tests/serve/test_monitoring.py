"""Prometheus monitoring: the rendered text parses with the real parser and holds the samples."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from lungxray.evaluation.shift import DriftMonitor  # noqa: E402
from lungxray.serve.monitoring import Monitoring, MonitoringMiddleware  # noqa: E402


def _samples(mon: Monitoring) -> dict[tuple[str, tuple], float]:
    body, ctype = mon.render()
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _reference(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(10, 2, n), rng.beta(2, 2, n)], 1)


def test_render_parses_and_holds_expected_samples():
    mon = Monitoring()
    mon.observe_request("/predict", 200, 0.12)
    mon.observe_request("/predict", 200, 0.3)
    mon.observe_request("/health", 503, 0.001)
    mon.set_queue_depth(3)
    mon.observe_prediction(12.0, False, 0.9)
    mon.observe_prediction(40.0, True, 0.2, gate_flag=True)
    mon.observe_prediction(None, None, None)  # a run without OOD statistics, a failed image
    s = _samples(mon)
    assert s[("lungxray_requests_total", (("route", "/predict"), ("status", "200")))] == 2
    assert s[("lungxray_requests_total", (("route", "/health"), ("status", "503")))] == 1
    assert s[("lungxray_request_seconds_count", (("route", "/predict"),))] == 2
    assert s[("lungxray_request_seconds_sum", (("route", "/predict"),))] == pytest.approx(0.42)
    assert s[("lungxray_queue_depth", ())] == 3
    assert s[("lungxray_predictions_total", ())] == 3
    assert s[("lungxray_ood_flagged_total", ())] == 1
    assert s[("lungxray_gate_flagged_total", ())] == 1
    assert s[("lungxray_score_count", ())] == 2
    assert s[("lungxray_score_bucket", (("le", "0.5"),))] == 1
    assert s[("lungxray_ood_distance_count", ())] == 2
    assert s[("lungxray_drift", ())] == 0 and math.isnan(s[("lungxray_drift_p_value", ())])


def test_registries_are_private_per_instance():
    a, b = Monitoring(), Monitoring()
    a.observe_request("/x", 200, 0.1)
    assert ("lungxray_requests_total", (("route", "/x"), ("status", "200"))) not in _samples(b)


def test_drift_gauge_fires_on_a_shifted_stream_and_stays_quiet_otherwise():
    ref = _reference()
    quiet = Monitoring(drift=DriftMonitor(ref, window=100, min_samples=50))
    loud = Monitoring(drift=DriftMonitor(ref, window=100, min_samples=50))
    for d, sc in _reference(100, seed=1):
        quiet.observe_prediction(d, False, sc)
        loud.observe_prediction(d + 8.0, True, sc)
    assert _samples(quiet)[("lungxray_drift", ())] == 0
    s = _samples(loud)
    assert s[("lungxray_drift", ())] == 1 and s[("lungxray_drift_p_value", ())] < 0.01
    assert loud.drift().fired and "differs" in loud.drift().summary


def test_asgi_middleware_counts_routes_and_errors():
    mon = Monitoring()

    class Route:
        path = "/runs/{name}"

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        scope["route"] = Route()  # what Starlette's router does on a match
        await send({"type": "http.response.start", "status": 404 if scope["path"] == "/runs/b" else 200})
        await send({"type": "http.response.body", "body": b""})

    wrapped = MonitoringMiddleware(app, mon)

    async def noop(message):
        return None

    async def run():
        for path in ("/runs/a", "/runs/b"):
            await wrapped({"type": "http", "path": path}, None, noop)
        with pytest.raises(RuntimeError):
            await wrapped({"type": "http", "path": "/boom"}, None, noop)
        await wrapped({"type": "lifespan"}, None, noop)  # passes through, not counted

    asyncio.run(run())
    s = _samples(mon)
    assert s[("lungxray_requests_total", (("route", "/runs/{name}"), ("status", "200")))] == 1
    assert s[("lungxray_requests_total", (("route", "/runs/{name}"), ("status", "404")))] == 1
    assert s[("lungxray_requests_total", (("route", "other"), ("status", "500")))] == 1


def test_fastapi_wiring_labels_route_templates():
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    mon = Monitoring()
    app = fastapi.FastAPI()
    app.add_middleware(MonitoringMiddleware, monitoring=mon)

    @app.get("/runs/{name}")
    def run(name: str):
        return {"name": name}

    @app.get("/metrics")
    def metrics():
        body, ctype = mon.render()
        return fastapi.Response(body, media_type=ctype)

    client = TestClient(app)
    assert client.get("/runs/a").status_code == 200 and client.get("/runs/b").status_code == 200
    assert client.get("/nowhere").status_code == 404
    text = client.get("/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    got = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in fams["lungxray_requests"].samples
        if s.name == "lungxray_requests_total"
    }
    assert got[("/runs/{name}", "200")] == 2 and got[("other", "404")] == 1
