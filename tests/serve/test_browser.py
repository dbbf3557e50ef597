"""The web page in a real headless Chromium (system package, via Playwright) against a live server.

Screenshots (desktop 1280 x 900 and phone 390 x 844) go to ``artifacts/`` at the repository root, or
to ``$LUNGXRAY_ARTIFACTS``. Skipped when /usr/bin/chromium or Playwright is missing.
"""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CHEST_XRAY, inject_prediction_warning, random_lung_run, require_data, tiny_gate

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
XRAY = CHEST_XRAY / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")


def artifacts_dir() -> Path:
    path = Path(os.environ.get("LUNGXRAY_ARTIFACTS") or REPO / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a background thread; yield its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def base_url(tiny_run: Path) -> Iterator[str]:
    from lungxray.serve.app import create_app

    require_data(XRAY)
    app = create_app(tiny_run)
    app.state.service.warmup()  # the first Grad-CAM imports take seconds on a busy CPU
    with serving(app) as url:
        yield url


def open_page(browser, url: str, width: int, height: int):
    """A fresh page; records console errors and any request that leaves the server."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on(
        "request",
        lambda r: r.url.startswith((url, "data:")) or page.problems.append(f"external request {r.url}"),
    )
    page.goto(url + "/")
    sync_api.expect(page.locator("#model-badge")).to_contain_text("Model:", timeout=20_000)
    return context, page


def upload_and_wait(page, path: Path) -> None:
    page.set_input_files("#file-input", str(path))
    sync_api.expect(page.locator("#summary")).not_to_be_empty(timeout=60_000)
    sync_api.expect(page.locator("#spinner")).to_be_hidden(timeout=60_000)


def test_upload_shows_label_bar_and_heatmap(browser, base_url: str) -> None:
    import httpx

    expected = httpx.post(
        base_url + "/api/predict?heatmap=false", files={"file": (XRAY.name, XRAY.read_bytes())}
    ).json()
    context, page = open_page(browser, base_url, 1280, 900)
    sync_api.expect(page.locator(".disclaimer").first).to_contain_text("Decision support only")
    upload_and_wait(page, XRAY)

    sync_api.expect(page.locator("#summary")).to_have_text(expected["summary"])
    fill = page.locator(".track .fill")
    sync_api.expect(fill).to_be_visible()
    width = fill.evaluate(
        "e => e.getBoundingClientRect().width / e.parentElement.getBoundingClientRect().width"
    )
    assert width == pytest.approx(expected["score"], abs=0.01)
    tick = page.locator(".track .tick")
    sync_api.expect(tick).to_be_visible()
    sync_api.expect(tick).to_contain_text(f"threshold {expected['threshold']:.2f}")
    for selector in ("#xray", "#heat"):
        sync_api.expect(page.locator(selector)).to_be_visible()
        assert page.locator(selector).evaluate("img => img.complete && img.naturalWidth") > 0
    assert page.locator("#ood-banner").is_hidden() == (not expected["ood"]["flag"])

    page.locator("#opacity").fill("20")
    sync_api.expect(page.locator("#opacity-value")).to_have_text("20%")
    assert page.locator("#heat").evaluate("img => getComputedStyle(img).opacity") == "0.2"
    page.locator("#opacity").fill("70")
    assert page.locator("#heat").evaluate("img => getComputedStyle(img).opacity") == "0.7"
    page.screenshot(path=str(artifacts_dir() / "serve-desktop-1280.png"), full_page=True)
    assert page.problems == []
    context.close()


def test_phone_layout_and_error_message(browser, base_url: str, tmp_path: Path) -> None:
    context, page = open_page(browser, base_url, 390, 844)
    upload_and_wait(page, XRAY)
    sync_api.expect(page.locator("#heat")).to_be_visible()
    # Nothing wider than the phone: no horizontal scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator(".stack").bounding_box()["width"] <= 390
    page.screenshot(path=str(artifacts_dir() / "serve-phone-390.png"), full_page=True)

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is a text file, not an X-ray\n" * 10)
    page.set_input_files("#file-input", str(bad))
    error = page.locator("#error")
    sync_api.expect(error).to_be_visible(timeout=30_000)
    sync_api.expect(error).to_contain_text("could not be read as an image")
    sync_api.expect(error).to_be_in_viewport(ratio=1, timeout=5_000)  # scrolled to from below
    sync_api.expect(page.locator("#result")).to_be_hidden()  # no stale result beside the error
    assert error.evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
    page.screenshot(path=str(artifacts_dir() / "serve-phone-390-error.png"))
    problems = [p for p in page.problems if "422" not in p]  # the browser logs the failed request
    assert problems == []
    context.close()


def test_page_asks_for_the_api_key(browser, tiny_run: Path) -> None:
    from lungxray.serve.app import create_app

    with serving(create_app(tiny_run, api_key="page-key-0123456789")) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(url + "/")
        sync_api.expect(page.locator("#key-form")).to_be_visible(timeout=20_000)
        sync_api.expect(page.locator("#error")).to_contain_text("API key")
        page.fill("#api-key", "page-key-0123456789")
        page.click("#key-form button")
        sync_api.expect(page.locator("#model-badge")).to_contain_text("Model:", timeout=20_000)
        sync_api.expect(page.locator("#key-form")).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('lungxray.apiKey')") == "page-key-0123456789"
        context.close()


def test_warnings_before_the_score_and_drift_banner(browser, tiny_run: Path, monkeypatch) -> None:
    """A prediction's warnings (DICOM header checks; monkeypatched here) show above the summary, and a
    firing drift check shows a banner in the page header."""
    import types

    from lungxray.serve.app import create_app

    require_data(XRAY)
    inject_prediction_warning(monkeypatch, "adult age (54Y) but the model was trained on children")
    app = create_app(tiny_run, drift=False)
    fired = types.SimpleNamespace(fired=True, p_value=1e-9, n_sample=200, summary="differs")
    app.state.monitoring.drift = lambda: fired
    with serving(app) as url:
        context, page = open_page(browser, url, 1280, 900)
        sync_api.expect(page.locator("#drift-banner")).to_be_visible(timeout=20_000)
        sync_api.expect(page.locator("#drift-banner")).to_contain_text("drift")
        sync_api.expect(page.locator("#card-body")).to_contain_text("Intended population")
        sync_api.expect(page.locator("#card-body")).to_contain_text("Calibration in force")
        upload_and_wait(page, XRAY)
        box = page.locator("#pred-warnings")
        sync_api.expect(box).to_be_visible()
        sync_api.expect(box).to_contain_text("adult age (54Y)")
        above = page.evaluate(
            "() => document.getElementById('pred-warnings').getBoundingClientRect().bottom <= "
            "document.getElementById('summary').getBoundingClientRect().top"
        )
        assert above
        page.screenshot(path=str(artifacts_dir() / "serve-warnings-1280.png"), full_page=True)
        assert page.problems == []
        context.close()


def test_model_card_shows_the_shortcut_audit_and_external_sets(browser, tiny_run: Path, tmp_path: Path) -> None:
    """The page's "About this model" panel reports the run's shortcut audit and its external evaluations
    (here: a random-weight lung net and 6 external normal films; the texts, not the values, are checked)."""
    import shutil

    from lungxray.evaluation.evaluate import evaluate_run
    from lungxray.serve.app import create_app

    pytest.importorskip("segmentation_models_pytorch")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint*", "figures", "eval"))
    evaluate_run(run, n_boot=20, progress=False, lungs=random_lung_run(tmp_path / "lungs"))
    site = tmp_path / "site_b" / "NORMAL"
    site.mkdir(parents=True)
    for f in sorted((CHEST_XRAY / "test" / "NORMAL").glob("*.jpeg"))[-6:]:
        shutil.copy(f, site / f.name)
    with (run / "splits.csv").open(newline="") as fh:  # and one of the run's own test films, renamed
        own = next(r["path"] for r in csv.DictReader(fh) if r["split"] == "test" and r["label"] == "NORMAL")
    shutil.copy(own, site / "renamed.jpeg")
    from lungxray.gate import attach_gate

    attach_gate(tiny_gate(tmp_path / "gate", tmp_path / "cache"), run)  # a population gate (docs/gate.md)
    with pytest.warns(Warning):  # one class: AUC undefined, and said so
        evaluate_run(run, data=site.parent, n_boot=20, progress=False)
    with serving(create_app(run)) as url:
        context, page = open_page(browser, url, 1280, 900)
        card = page.locator("#card-body")
        sync_api.expect(card).to_contain_text("Where the model looks (shortcut audit, test set)")
        sync_api.expect(card).to_contain_text("AUC with the lung fields blanked")
        sync_api.expect(card).to_contain_text("Other data sets (external, at the same threshold)")
        sync_api.expect(card).to_contain_text("site_b-all (n = 7): specificity")
        sync_api.expect(card).to_contain_text("1 are this model's own test films (not an independent set)")
        sync_api.expect(card).to_contain_text("flagged by the population gate")
        sync_api.expect(card).to_contain_text("Population gate")
        assert page.problems == []
        context.close()


def test_model_card_says_when_the_weights_were_adapted_to_a_site(browser, tiny_run: Path, tmp_path: Path) -> None:
    """A run from `calibrate --adapt-bn` tells the reader its scores come from a site-adapted model."""
    import os

    from lungxray.calibrate_site import calibrate_site
    from lungxray.serve.app import create_app

    site = tmp_path / "site"
    for cls, n in (("NORMAL", 25), ("PNEUMONIA", 30)):
        (site / cls).mkdir(parents=True)
        for f in sorted((CHEST_XRAY / "test" / cls).glob("*.jpeg"))[:n]:
            os.symlink(f, site / cls / f.name)
    calibrate_site(tiny_run, site, strategy="youden", out=tmp_path / "adapted", n_boot=20, adapt_bn=True)
    with serving(create_app(tmp_path / "adapted")) as url:
        context, page = open_page(browser, url, 1280, 900)
        card = page.locator("#card-body")
        sync_api.expect(card).to_contain_text("Site adaptation")
        sync_api.expect(card).to_contain_text("BatchNorm statistics adapted to 55 site images (site")
        sync_api.expect(card).to_contain_text("youden on site")
        assert page.problems == []
        context.close()
