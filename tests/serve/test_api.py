"""REST API of ``lungxray serve`` on a real tiny run: predictions, limits, key, queue, no disk writes."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from conftest import CHEST_XRAY, dicom_bytes, random_lung_run, require_data  # noqa: E402
from lungxray import DISCLAIMER  # noqa: E402
from lungxray.data.imageio import read_image  # noqa: E402
from lungxray.predict import Predictor  # noqa: E402
from lungxray.runcard import RunCard
from lungxray.serve.app import create_app  # noqa: E402
from lungxray.serve.upload import safe_filename  # noqa: E402

LOCAL = "http://localhost"  # the Host check answers loopback names only
XRAY = CHEST_XRAY / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"
NORMAL = CHEST_XRAY / "test" / "NORMAL" / "IM-0001-0001.jpeg"


@pytest.fixture(scope="module")
def xray_bytes() -> bytes:
    return require_data(XRAY).read_bytes()


@pytest.fixture(scope="module")
def client(tiny_run: Path) -> TestClient:
    with TestClient(create_app(tiny_run), base_url=LOCAL) as c:
        yield c


def post_file(client: TestClient, data: bytes, name: str = "chest.jpeg", **params: str) -> httpx.Response:
    return client.post(
        "/api/predict", params=params, files={"file": (name, data, "application/octet-stream")}
    )


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))


# ------------------------------------------------------------------------------------ predictions


def test_predict_jpeg_returns_every_field(client: TestClient, tiny_run: Path, xray_bytes: bytes) -> None:
    r = post_file(client, xray_bytes, "person100_bacteria_475.jpeg")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = Predictor.load(tiny_run).predict_bytes(xray_bytes, "x.jpeg")
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
    assert body["label"] == expected.label
    assert body["score"] == pytest.approx(expected.probabilities["PNEUMONIA"], abs=1e-5)
    assert body["threshold"] == pytest.approx(expected.threshold)
    assert (body["label"] == "PNEUMONIA") == (body["score"] >= body["threshold"])
    positive = body["label"] == "PNEUMONIA"
    summary = "Finding suggests PNEUMONIA" if positive else "No PNEUMONIA detected at the chosen threshold"
    assert body["summary"] == summary
    assert body["threshold_strategy"] == RunCard.read(tiny_run).threshold_strategy
    assert body["ood"]["score"] == pytest.approx(expected.ood_score, rel=1e-4)
    assert body["ood"]["flag"] == (body["ood"]["score"] > body["ood"]["threshold"])
    assert body["model"]["architecture"] == "cnn-small" and body["model"]["created"]
    assert set(body["timing_ms"]) >= {"decode", "predict", "heatmap", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["predict"] > 0
    assert body["disclaimer"] == DISCLAIMER
    assert body["filename"] == "person100_bacteria_475.jpeg"
    assert body["heatmap_target"] == "PNEUMONIA"
    xray, heat, over = (decode_data_url(body[k]) for k in ("image_png", "heatmap_png", "overlay_png"))
    assert xray.mode == "L" and xray.size == (224, 224)  # the 224 px JPEG at display size
    assert heat.mode == "RGBA" and heat.size == xray.size
    assert over.mode == "RGB" and over.size == xray.size
    alpha = np.asarray(heat)[..., 3]
    assert alpha.max() > 0 and alpha.min() == 0  # hot regions shown, cold ones transparent


def test_heatmap_false_omits_images(client: TestClient, xray_bytes: bytes) -> None:
    body = post_file(client, xray_bytes, heatmap="false").json()
    assert body["label"] in ("NORMAL", "PNEUMONIA")
    for key in ("image_png", "heatmap_png", "overlay_png"):
        assert key not in body
    assert "heatmap" not in body["timing_ms"]


def test_raw_body_upload_matches_multipart(client: TestClient, xray_bytes: bytes) -> None:
    raw = client.post(
        "/api/predict?heatmap=false&filename=a.jpeg",
        content=xray_bytes,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["filename"] == "a.jpeg"
    form = post_file(client, xray_bytes, heatmap="false").json()
    assert raw.json()["probabilities"] == pytest.approx(form["probabilities"])


def test_dicom_upload_predicts_like_the_pixels(client: TestClient, tiny_run: Path) -> None:
    if not NORMAL.exists():
        pytest.skip("shared data missing")
    g = read_image(NORMAL).astype(np.float64)
    g = (g - g.min()) / (g.max() - g.min())  # DICOM reading min-max stretches, so compare with this
    data = dicom_bytes(np.round(g * 65535).astype(np.uint16))
    r = post_file(client, data, "scan.dcm")
    assert r.status_code == 200, r.text
    expected = Predictor.load(tiny_run).predict_arrays([g.astype(np.float32)])[0]
    assert r.json()["probabilities"] == pytest.approx(expected.probabilities, abs=2e-3)
    assert decode_data_url(r.json()["image_png"]).size == (224, 224)  # the browser can show a DICOM
    # The DICOM magic, not the name, decides: the same bytes named .bin are read too.
    assert post_file(client, data, "scan.bin", heatmap="false").status_code == 200


# --------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"this is not an image at all" * 20, "not a recognised image"), (b"", "empty file")],
)
def test_unreadable_upload_is_422_with_reason(client: TestClient, data: bytes, reason: str) -> None:
    r = post_file(client, data, "bad.png")
    assert r.status_code == 422
    assert reason in r.json()["detail"]


def test_truncated_jpeg_is_422(client: TestClient, xray_bytes: bytes) -> None:
    r = post_file(client, xray_bytes[:200], "cut.jpeg")
    assert r.status_code == 422 and r.json()["detail"]


def test_unsupported_content_type_and_missing_field(client: TestClient) -> None:
    r = client.post("/api/predict", content=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/api/predict", data={"other": "x"}, files={"notes": ("", b"")})
    assert r.status_code == 422  # no field named "file": the part without filename is not taken
    r = client.post("/api/predict", data={"other": "x"})
    assert r.status_code in (415, 422)  # urlencoded form: not an upload


def test_client_filename_is_sanitised(client: TestClient) -> None:
    r = post_file(client, b"garbage bytes here", "../../etc/<script>passwd.png")
    assert r.status_code == 422
    assert r.json()["filename"] == "_script_passwd.png"
    assert "/" not in r.json()["filename"]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("chest.png", "chest.png"),
        ("C:\\Users\\me\\scan 1.dcm", "scan 1.dcm"),
        ("../../x.jpeg", "x.jpeg"),
        ("..", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("a\x00b<>.png", "a_b_.png"),
    ],
)
def test_safe_filename(raw: str | None, clean: str) -> None:
    assert safe_filename(raw) == clean


def test_upload_over_limit_is_413(tiny_run: Path, xray_bytes: bytes) -> None:
    small = TestClient(create_app(tiny_run, max_upload_mb=0.01), base_url=LOCAL)  # 10,485 bytes
    big = np.random.default_rng(0).bytes(50_000)
    r = small.post("/api/predict", files={"file": ("big.png", big)})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = small.post("/api/predict", content=big, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413
    # Chunked body without Content-Length: refused while streaming.
    r = small.post(
        "/api/predict",
        content=(big[i : i + 4096] for i in range(0, len(big), 4096)),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 413
    # A small real image still passes the same app.
    assert len(xray_bytes) < 10_485
    assert small.post("/api/predict?heatmap=false", files={"file": ("x.jpeg", xray_bytes)}).status_code == 200


async def _drive(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """Send a request straight through ASGI; return (status, body bytes the app consumed)."""
    consumed = 0
    queue = list(chunks)
    status: list[int] = []

    async def receive() -> dict:
        nonlocal consumed
        if not queue:
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk = queue.pop(0)
        consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/predict",
        "raw_path": b"/api/predict",
        "query_string": b"heatmap=false",
        "root_path": "",
        "headers": [(b"host", b"localhost"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return status[0], consumed


def test_413_is_decided_before_the_body_is_read(tiny_run: Path) -> None:
    app = create_app(tiny_run, max_upload_mb=0.01)
    chunks = [bytes(4096)] * 256  # 1 MiB offered
    octet = (b"content-type", b"application/octet-stream")
    status, consumed = asyncio.run(_drive(app, [octet, (b"content-length", b"1048576")], chunks))
    assert (status, consumed) == (413, 0)  # the declared size alone refuses it
    status, consumed = asyncio.run(_drive(app, [octet], chunks))  # no Content-Length: streamed
    assert status == 413 and consumed <= 10_485 + 4096  # stops at the first chunk past the limit
    lying = [octet, (b"content-length", b"100")]  # claims 100 bytes, sends 1 MiB
    status, consumed = asyncio.run(_drive(app, lying, chunks))
    assert status == 413 and consumed <= 10_485 + 4096


# ------------------------------------------------------------------------------------------- key


def test_api_key_required_on_api_only(tiny_run: Path, xray_bytes: bytes) -> None:
    c = TestClient(create_app(tiny_run, api_key="s3cret-key-0123456789"), base_url=LOCAL)
    assert c.get("/api/model").status_code == 401
    assert c.get("/api/model", headers={"X-API-Key": "wrong"}).status_code == 401
    assert c.get("/api/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = c.post("/api/predict", files={"file": ("x.jpeg", xray_bytes)})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert c.get("/api/model", headers={"X-API-Key": "s3cret-key-0123456789"}).status_code == 200
    assert c.get("/api/model", headers={"Authorization": "Bearer s3cret-key-0123456789"}).status_code == 200
    ok = c.post(
        "/api/predict?heatmap=false",
        files={"file": ("x.jpeg", xray_bytes)},
        headers={"X-API-Key": "s3cret-key-0123456789"},
    )
    assert ok.status_code == 200
    assert c.get("/health").status_code == 200  # open: for load balancers
    assert c.get("/").status_code == 200  # open: the page asks for the key


# ----------------------------------------------------------------------------------------- queue


def test_full_queue_answers_503_with_retry_after(tiny_run: Path, xray_bytes: bytes, monkeypatch) -> None:
    app = create_app(tiny_run, workers=1, queue_size=1)
    service = app.state.service
    predictor = service.predictors[0]
    started, release = threading.Event(), threading.Event()
    real = predictor.predict_images

    def held(*args, **kwargs):  # holds the only worker until the test lets go
        started.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict_images", held)

    async def scenario() -> tuple[httpx.Response, httpx.Response, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as c:
            files = {"file": ("x.jpeg", xray_bytes)}
            first = asyncio.create_task(c.post("/api/predict?heatmap=false", files=files))
            assert await asyncio.to_thread(started.wait, 30)
            second = await c.post("/api/predict?heatmap=false", files=files)
            release.set()
            done = await first
            await asyncio.sleep(0.05)  # the slot is freed by a callback on the loop
            pending = (await c.get("/health")).json()["queue"]["pending"]
            return second, done, pending

    try:
        second, first, pending = asyncio.run(scenario())
    finally:
        release.set()
    assert second.status_code == 503
    assert int(second.headers["retry-after"]) >= 1
    assert "busy" in second.json()["detail"]
    assert first.status_code == 200
    assert pending == 0


# ------------------------------------------------------------------------------- card and pages


def test_model_card(client: TestClient) -> None:
    card = client.get("/api/model").json()
    assert card["task"] == "binary" and card["classes"] == ["NORMAL", "PNEUMONIA"]
    assert card["positive_class"] == "PNEUMONIA"
    assert 0 < card["threshold"] < 1 and "validation" in card["threshold_note"]
    counts = card["training"]["counts"]
    assert set(counts) == {"train", "val", "test"}
    assert card["training"]["n_images"] == sum(sum(c.values()) for c in counts.values())
    assert card["training"]["data"] == "chest_xray"  # folder name only: no server path
    assert "/" not in json.dumps(card["training"])
    assert card["test_metrics"] is None
    assert any("evaluate" in item for item in card["limitations"])
    assert card["intended_use"] and card["disclaimer"] == DISCLAIMER


def test_model_card_includes_test_metrics(tiny_run: Path, tmp_path: Path) -> None:
    from lungxray.evaluation.metrics import evaluate_predictions

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint*", "figures"))
    predictor = Predictor.load(run)
    files = sorted((CHEST_XRAY / "test" / "NORMAL").glob("*.jpeg"))[:6]
    files += sorted((CHEST_XRAY / "test" / "PNEUMONIA").glob("*.jpeg"))[:6]
    scores = [p.score for p in predictor.predict_paths(files)]
    metrics = evaluate_predictions(
        "binary",
        [0] * 6 + [1] * 6,
        scores,
        predictor.classes,
        threshold=predictor.card.threshold,
        n_boot=50,
    )
    (run / "eval" / "test").mkdir(parents=True)
    (run / "eval" / "test" / "metrics.json").write_text(json.dumps(metrics))
    card = TestClient(create_app(run), base_url=LOCAL).get("/api/model").json()
    assert card["test_metrics"]["auc"] == metrics["auc"]
    assert {"value", "ci_low", "ci_high"} <= set(card["test_metrics"]["sensitivity"])
    assert not any("evaluate" in item for item in card["limitations"])


def test_health_page_static_and_openapi(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_loaded"] is True
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert DISCLAIMER.replace("'", "&#x27;") in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert (
        client.get("/static/app.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/model", "/health"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert client.get("/api/model").headers["cache-control"] == "no-store"


def test_nothing_uploaded_is_written_to_disk(client: TestClient, tmp_path: Path, monkeypatch) -> None:
    """A >1.1 MB upload (Starlette's form parser would spool it to a temporary file past 1 MB) creates
    no file: none in the temp dir or the working dir, and no (anonymous) temporary file is opened."""
    if not XRAY.exists():
        pytest.skip("shared data missing")
    big = Image.open(XRAY).convert("L").resize((1200, 1200))
    noise = np.random.default_rng(0).integers(0, 64, (1200, 1200), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.asarray(big) // 2 + noise * 2).save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) > 1_100_000
    tmp_dir, work = tmp_path / "tmp", tmp_path / "cwd"
    tmp_dir.mkdir()
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_dir))
    monkeypatch.chdir(work)
    opened: list[str] = []
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        real = getattr(tempfile, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            opened.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(tempfile, name, spy)
    r = post_file(client, data, "big.png")
    assert r.status_code == 200, r.text
    raw = client.post("/api/predict?heatmap=false", content=data, headers={"Content-Type": "image/png"})
    assert raw.status_code == 200
    assert opened == []
    assert list(tmp_dir.iterdir()) == [] and list(work.iterdir()) == []
    with tempfile.SpooledTemporaryFile(max_size=10) as control:  # the spy sees a spill
        control.write(bytes(100))
    assert opened == ["TemporaryFile"]


def test_one_upload_is_decoded_and_scored_once(tiny_run: Path, xray_bytes: bytes, monkeypatch) -> None:
    """The server consumes one prediction record: one decode, one forward for the probabilities."""
    import lungxray.data.imageio as imageio

    app = create_app(tiny_run, workers=1)
    predictor = app.state.service.predictors[0]
    decodes, forwards = [], []
    real_decode, real_forward = imageio.read_image_bytes, predictor.predict_images
    monkeypatch.setattr(
        imageio, "read_image_bytes", lambda d, **kw: decodes.append(1) or real_decode(d, **kw)
    )
    monkeypatch.setattr(
        predictor, "predict_images", lambda x, **kw: forwards.append(len(x)) or real_forward(x, **kw)
    )
    with TestClient(app, base_url=LOCAL) as c:
        r = post_file(c, xray_bytes, "x.jpeg")
    assert r.status_code == 200 and r.json()["heatmap_target"] == "PNEUMONIA"
    assert decodes == [1] and forwards == [1]


def test_model_card_reports_shortcut_audit_and_external_sets(tiny_run: Path, tmp_path: Path, cache_dir) -> None:
    """A run evaluated with `--lungs` and on another folder: the card carries the audit's AUCs (with the
    lungs blanked / only the lungs kept) and the external set's rates at the stored threshold."""
    pytest.importorskip("segmentation_models_pytorch")
    from lungxray.evaluation.evaluate import evaluate_run
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint*", "figures", "eval"))
    lungs = random_lung_run(tmp_path / "lungs")
    test = evaluate_run(run, n_boot=20, progress=False, cache_dir=cache_dir, lungs=lungs).metrics
    other = tmp_path / "other-site"  # an "external" folder: 8 normal, 8 pneumonia films of the test split
    for cls in ("NORMAL", "PNEUMONIA"):
        (other / cls).mkdir(parents=True)
        for f in sorted((CHEST_XRAY / "test" / cls).glob("*.jpeg"))[-8:]:
            (other / cls / f.name).symlink_to(f)
    ext = evaluate_run(run, data=other, n_boot=20, progress=False, cache_dir=cache_dir).metrics

    card = TestClient(create_app(run), base_url=LOCAL).get("/api/model").json()
    audit = card["shortcut_audit"]
    occ = test["shortcut"]["occlusion"]
    assert audit["auc_plain"]["value"] == pytest.approx(test["auc"]["value"])
    assert audit["auc_lungs_blanked"]["value"] == pytest.approx(occ["lungs_blanked"]["auc"])
    assert audit["auc_only_lungs"]["value"] == pytest.approx(occ["only_lungs"]["auc"])
    assert 0.0 <= audit["cam_in_lungs"] <= 1.0
    [e] = card["external"]
    assert e["name"] == ext["eval_name"] and e["n"] == 16
    assert e["specificity"]["value"] == pytest.approx(ext["specificity"]["value"])
    assert isinstance(e["shift_fired"], bool)
    with (run / "splits.csv").open(newline="") as fh:  # films of the folder the run itself holds out as test
        own_test = {r["path"] for r in csv.DictReader(fh) if r["split"] == "test"}
    held = sum(str((CHEST_XRAY / "test" / c / f.name).resolve()) in own_test
               for c in ("NORMAL", "PNEUMONIA") for f in (other / c).iterdir())  # fmt: skip
    assert e["overlap_with_test"] == ext["overlap_with_test"] == held >= 1  # the run holds one of them out
    assert e["overlap_with_training"] == ext["overlap_with_training"]
