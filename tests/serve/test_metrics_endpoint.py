"""/metrics scraped by the real Prometheus text parser; the drift check on real image streams;
the guards (Host / Origin, key length, /docs), the server pixel cap, warnings before the score."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from conftest import CHEST_XRAY, DATA_ROOT, inject_prediction_warning, require_data  # noqa: E402
from lungxray.errors import ConfigError  # noqa: E402
from lungxray.serve.app import create_app, run_server  # noqa: E402
from lungxray.serve.guard import RedactQuery, resolve_api_key  # noqa: E402

LOCAL = "http://localhost"
KEY = "metrics-key-0123456789"
NIH = DATA_ROOT / "nih_sample" / "images"
XRAY = CHEST_XRAY / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"


def scrape(client: TestClient, **headers: str) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def predict(client: TestClient, path: Path, **headers: str):
    return client.post(
        "/api/predict?heatmap=false", files={"file": (path.name, path.read_bytes())}, headers=headers
    )


@pytest.fixture(scope="module")
def keyed(tiny_run: Path) -> TestClient:
    with TestClient(create_app(tiny_run, api_key=KEY), base_url=LOCAL) as c:
        yield c


def test_metrics_scraped_by_the_prometheus_parser(keyed: TestClient) -> None:
    require_data(XRAY)
    auth = {"X-API-Key": KEY}
    assert keyed.get("/metrics").status_code == 401  # scores of patients: behind the key
    assert predict(keyed, XRAY, **auth).status_code == 200
    assert (
        keyed.post("/api/predict", content=b"x", headers={"Content-Type": "text/plain", **auth}).status_code
        == 415
    )
    s = scrape(keyed, **auth)
    assert s[("lungxray_requests_total", (("route", "/api/predict"), ("status", "200")))] >= 1
    assert s[("lungxray_requests_total", (("route", "/api/predict"), ("status", "415")))] >= 1
    assert s[("lungxray_request_seconds_count", (("route", "/api/predict"),))] >= 2
    assert s[("lungxray_queue_depth", ())] == 0
    assert s[("lungxray_predictions_total", ())] >= 1
    assert ("lungxray_ood_flagged_total", ()) in s
    assert s[("lungxray_score_count", ())] >= 1
    assert s[("lungxray_ood_distance_count", ())] >= 1
    assert s[("lungxray_drift", ())] == 0  # fewer than 50 predictions: no check yet
    keyed.get("/health", headers={"Host": "evil.example"})
    s = scrape(keyed, **auth)
    assert s[("lungxray_requests_total", (("route", "other"), ("status", "400")))] >= 1  # refusals count too


def _unseen_chest_xrays(run: Path, n: int) -> list[Path]:
    """Kermany images the run never saw (not in its splits.csv): a same-source stream."""
    with (run / "splits.csv").open() as fh:
        used = {Path(r["path"]).resolve() for r in csv.DictReader(fh)}
    files = sorted((CHEST_XRAY / "test" / "NORMAL").glob("*.jpeg")) + sorted(
        (CHEST_XRAY / "test" / "PNEUMONIA").glob("*.jpeg")
    )
    files = [f for f in files if f.resolve() not in used]
    idx = np.linspace(0, len(files) - 1, n).round().astype(int)
    return [files[i] for i in idx]


def test_drift_fires_on_nih_and_stays_quiet_on_chest_xray(tiny_run: Path) -> None:
    require_data(NIH)
    app = create_app(tiny_run)
    assert app.state.drift_source.startswith("model.safetensors")  # the val pairs stored at training
    quiet = TestClient(app, base_url=LOCAL)
    for path in _unseen_chest_xrays(tiny_run, 60):
        assert predict(quiet, path).status_code == 200
    health = quiet.get("/health").json()
    print(f"\n[drift] chest_xray stream: {health['drift']['summary']}")
    assert health["drift"]["n"] == 60 and not health["drift"]["fired"] and health["warnings"] == []

    loud = TestClient(create_app(tiny_run), base_url=LOCAL)
    for path in sorted(NIH.glob("*.png"))[:60]:
        assert predict(loud, path).status_code == 200
    health = loud.get("/health").json()
    print(f"[drift] nih_sample stream: {health['drift']['summary']}")
    assert health["drift"]["fired"] and "drift" in health["warnings"][0]
    assert health["status"] == "ok"  # liveness is unaffected: the warning is for the reader
    s = scrape(loud)
    assert s[("lungxray_drift", ())] == 1 and s[("lungxray_drift_p_value", ())] < 0.01


def test_card_shows_population_and_calibration(keyed: TestClient) -> None:
    card = keyed.get("/api/model", headers={"X-API-Key": KEY}).json()
    assert card["population"] == "not stated"  # the tiny recipe sets none
    cal = card["calibration"]
    assert cal["split"] == "val" and cal["strategy"] and 0 < cal["threshold"] < 1 and cal["created"]
    page = keyed.get("/").text
    assert 'id="drift-banner"' in page
    assert page.index('id="pred-warnings"') < page.index('id="summary"')  # warnings before the score


def test_prediction_warnings_come_before_the_score(keyed: TestClient, monkeypatch) -> None:
    """Works before and after Prediction gains ``warnings`` (DICOM header checks)."""

    require_data(XRAY)
    inject_prediction_warning(monkeypatch, "lateral view (ViewPosition LL): the model reads frontal films")
    body = predict(keyed, XRAY, **{"X-API-Key": KEY}).json()
    assert body["warnings"] == ["lateral view (ViewPosition LL): the model reads frontal films"]
    keys = list(body)
    assert keys.index("warnings") < keys.index("summary") < keys.index("score")


def test_server_pixel_cap_applies_to_uploads(keyed: TestClient) -> None:
    from PIL import Image as PILImage

    from lungxray.data.imageio import SERVER_MAX_PIXELS

    assert PILImage.MAX_IMAGE_PIXELS == SERVER_MAX_PIXELS
    buf = io.BytesIO()
    Image.new("L", (5200, 5000)).save(buf, format="PNG")  # 26 Mpx of zeros: a few KB
    r = keyed.post(
        "/api/predict?heatmap=false", files={"file": ("big.png", buf.getvalue())}, headers={"X-API-Key": KEY}
    )
    assert r.status_code == 422 and "too many pixels" in r.json()["detail"]


def test_host_and_origin_checks(keyed: TestClient) -> None:
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/health", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert keyed.get("/health", headers={"Host": "[::1]:8000"}).status_code == 200
    rebound = keyed.get("/", headers={"Host": "evil.example:8000"})
    assert rebound.status_code == 400  # DNS rebinding
    assert "default-src 'self'" in rebound.headers["content-security-policy"]
    auth = {"X-API-Key": KEY}
    files = {"file": ("x.png", b"not an image")}
    for origin in ("http://evil.example", "null"):
        r = keyed.post("/api/predict", files=files, headers={"Origin": origin, **auth})
        assert r.status_code == 403, origin
    r = keyed.post("/api/predict", files=files, headers={"Sec-Fetch-Site": "cross-site", **auth})
    assert r.status_code == 403
    r = keyed.post("/api/predict", files=files, headers={"Origin": "http://localhost", **auth})
    assert r.status_code == 422  # same origin: reaches the decoder


def test_docs_disabled_openapi_kept(keyed: TestClient) -> None:
    assert keyed.get("/docs").status_code == 404 and keyed.get("/redoc").status_code == 404
    assert "/api/predict" in keyed.get("/openapi.json").json()["paths"]
    assert "cdn" not in keyed.get("/").text.lower()


def test_api_key_rules(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        create_app(tiny_run, api_key="short-key")
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file-0123456789\n")
    assert resolve_api_key(None, key_file) == "from-a-file-0123456789"
    monkeypatch.setenv("LUNGXRAY_API_KEY", "from-the-env-0123456789")
    assert resolve_api_key() == "from-the-env-0123456789"
    with pytest.raises(ConfigError, match="not both"):
        resolve_api_key("x" * 20, key_file)
    monkeypatch.delenv("LUNGXRAY_API_KEY")
    with pytest.raises(ConfigError, match="without an API key"):
        run_server(tiny_run, host="0.0.0.0")  # refused before the model is loaded


def test_filename_query_kept_out_of_access_logs() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", "/api/predict?filename=Jane_Doe_1970.dcm&heatmap=false", "1.1", 200),
        None,
    )
    assert RedactQuery().filter(record)
    assert "Jane" not in record.getMessage() and "/api/predict" in record.getMessage()


def test_drift_reference_without_stored_pairs_comes_from_the_val_rows(tiny_run: Path, tmp_path: Path) -> None:
    """A run whose weights carry no stored validation pairs (trained before they were stored) falls
    back to predicting its splits.csv val rows once at start-up."""
    import shutil

    from safetensors.numpy import load_file, save_file

    run = tmp_path / "old"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.pt", "eval", "figures"))
    arrays = {k: v for k, v in load_file(str(run / "model.safetensors")).items() if "ref_" not in k}
    save_file(arrays, str(run / "model.safetensors"))
    assert create_app(run).state.drift_source.startswith("splits.csv val rows")
