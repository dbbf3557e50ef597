"""The web page and REST API of one run (FastAPI): upload an X-ray, get label, probabilities, heatmap.

Endpoints:
    GET  /              the web page (static HTML + vanilla JS, no build step)
    GET  /health        {"status": "ok", "model_loaded": true, ...}; always open
    GET  /api/model     the model card: task, classes, threshold and how it was chosen, training
                        counts, test metrics with CIs (if evaluated), intended use, limitations
    POST /api/predict   multipart field ``file`` (or a raw body) -> JSON prediction; ``?heatmap=false``
                        skips Grad-CAM and the images
    GET  /docs, /openapi.json   OpenAPI

Safety: with ``api_key`` every /api/* call needs ``X-API-Key: <key>`` or ``Authorization: Bearer
<key>`` (else 401). Uploads are held in memory only and refused with 413 past ``max_upload_mb``
(declared or streamed); unreadable images get 422 with the reason; a full queue gets 503 with
``Retry-After``. Inference runs on worker threads, never on the event loop. Decision support only.

FastAPI is imported here, at the top of this module: only ``lungxray serve`` (and tests) import it.

Example::

    app = create_app("runs/kermany", api_key="s3cret")     # then: uvicorn.run(app)
    run_server("runs/kermany", port=8000)                  # what `lungxray serve` does
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect

from lungxray import DISCLAIMER, __version__
from lungxray.errors import ConfigError, ImageReadError
from lungxray.serve.card import model_card
from lungxray.serve.service import Busy, InferenceService
from lungxray.serve.upload import UploadError, body_limit, check_content_length, parse_upload, read_limited

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page needs nothing from other origins; images arrive as data: URLs. /docs (Swagger UI from a
# CDN) gets no CSP.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_UNGUARDED_CSP = ("/docs", "/redoc")
_PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
_ERRORS = {
    401: {"description": "API key missing or wrong"},
    413: {"description": "Upload larger than the limit"},
    415: {"description": "Unsupported Content-Type"},
    422: {"description": "Not a readable image (detail says why)"},
    503: {"description": "Queue full; see Retry-After"},
}


class _SecurityHeaders:
    """ASGI middleware: nosniff, no referrer, a strict CSP on the page, no caching of API answers."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if not path.startswith(_UNGUARDED_CSP):
                    headers.setdefault("Content-Security-Policy", CSP)
                if path.startswith("/api/"):
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _key_checker(api_key: str | None) -> Any:
    """A FastAPI dependency that refuses /api/* calls without the key (constant-time comparison)."""
    expected = api_key.encode("utf-8") if api_key else None

    async def check_key(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("x-api-key")
        if given is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if given is None or not secrets.compare_digest(given.encode("utf-8"), expected):
            raise HTTPException(
                status_code=401,
                detail="API key missing or wrong: send it as the X-API-Key header (or Authorization: Bearer).",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check_key


def _summary(pred: Any, task: str, classes: list[str]) -> str:
    """The result in words, as the page shows it."""
    if task == "binary":
        positive = classes[1]
        if pred.label == positive:
            return f"Finding suggests {positive}"
        return f"No {positive} detected at the chosen threshold"
    if task == "multiclass":
        return f"Most likely: {pred.label}"
    if pred.label:
        return "Findings at or above their thresholds: " + ", ".join(pred.label)
    return "No finding at or above its threshold"


def _index_html() -> str:
    """index.html with the disclaimer and version filled in (one source of truth for the text)."""
    from html import escape

    text = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return text.replace("{{DISCLAIMER}}", escape(DISCLAIMER)).replace("{{VERSION}}", escape(__version__))


def create_app(
    run: str | os.PathLike,
    *,
    api_key: str | None = None,
    max_upload_mb: float = 20,
    workers: int = 1,
    queue_size: int | None = None,
) -> FastAPI:
    """Build the FastAPI app for one run; the model is loaded now (errors surface before serving).

    Args:
        run: the run directory.
        api_key: if given, required on every /api/* call (X-API-Key or Authorization: Bearer).
        max_upload_mb: largest accepted file in MB (2**20 bytes); larger uploads get 413.
        workers: inference threads (each holds its own copy of the model).
        queue_size: requests running + waiting at once (default ``4 * workers``); more get 503.

    Raises:
        RunError: ``run`` is not a loadable run. ConfigError: a limit below its minimum.
    """
    max_bytes = int(float(max_upload_mb) * 2**20)
    if max_bytes < 1:
        raise ConfigError(f"max_upload_mb must be positive, got {max_upload_mb}.")
    if api_key is not None and not api_key.strip():
        raise ConfigError("the API key is empty; give a non-empty key or none.")
    service = InferenceService(run, workers=workers, queue_size=queue_size)
    run_card = service.card
    classes = list(run_card.classes)
    index_html = _index_html()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        service.close()

    app = FastAPI(
        title="lungxray",
        version=__version__,
        description=f"Chest X-ray classifier `{run_card.name}` ({run_card.architecture}). {DISCLAIMER}",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.max_bytes = max_bytes
    app.add_middleware(_SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    guarded = [Depends(_key_checker(api_key))]
    model_meta = {
        "name": run_card.name,
        "architecture": run_card.architecture,
        "created": run_card.created,
        "lungxray_version": run_card.lungxray_version,
    }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(index_html)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the model is loaded; how many requests are in the queue."""
        return {
            "status": "ok",
            "model_loaded": True,
            "model": run_card.name,
            "queue": {"pending": service.pending, "capacity": service.capacity, "workers": service.workers},
        }

    @app.get("/api/model", dependencies=guarded, responses={401: _ERRORS[401]})
    async def model() -> dict[str, Any]:
        """Model card: task, classes, threshold (chosen on validation), training counts, test metrics."""
        card = model_card(service.run_dir, run_card)
        card["max_upload_mb"] = max_bytes / 2**20
        return card

    @app.post(
        "/api/predict", dependencies=guarded, openapi_extra={"requestBody": _PREDICT_BODY}, responses=_ERRORS
    )
    async def predict(request: Request, heatmap: bool = True, filename: str | None = None) -> Any:
        """Classify one chest X-ray (PNG, JPEG, TIFF, BMP, GIF or DICOM); decision support only.

        Send the file as multipart field ``file`` or as the raw body (``?filename=`` names it).
        """
        start = time.perf_counter()
        content_type = request.headers.get("content-type", "")
        limit = body_limit(content_type, max_bytes)
        try:
            check_content_length(request.headers.get("content-length"), limit)
            body = await read_limited(request.stream(), limit)
            upload = parse_upload(body, content_type, filename, max_bytes)
        except UploadError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        except ClientDisconnect:
            return JSONResponse({"detail": "the client disconnected during the upload."}, status_code=400)
        del body
        try:
            result = await service.analyze(upload.data, upload.name, heatmap=heatmap)
        except Busy as exc:
            return JSONResponse(
                {"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)}
            )
        except ImageReadError as exc:
            return JSONResponse({"detail": exc.reason, "filename": upload.name}, status_code=422)
        pred = result.pop("prediction")
        timing = {k: round(v * 1000, 1) for k, v in result.pop("timing").items()}
        timing["total"] = round((time.perf_counter() - start) * 1000, 1)
        predictor = service.predictors[0]
        return {
            "filename": upload.name,
            "summary": _summary(pred, predictor.task, classes),
            "label": pred.label,
            "probabilities": pred.probabilities,
            "score": pred.score,
            "threshold": pred.threshold,
            "threshold_strategy": run_card.threshold_strategy,
            "task": predictor.task,
            "classes": classes,
            "positive_class": classes[1] if predictor.task == "binary" else None,
            "ood": {"flag": pred.ood, "score": pred.ood_score, "threshold": predictor.ood_threshold},
            "model": model_meta,
            "timing_ms": timing,
            **result,
            "disclaimer": DISCLAIMER,
        }

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_server(
    run: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_upload_mb: float = 20.0,
    workers: int = 1,
) -> None:
    """Serve the web page and API with uvicorn until interrupted (what ``lungxray serve`` runs).

    Torch gets ``cores // workers`` intra-op threads so the worker threads do not oversubscribe
    the CPU. Binding beyond loopback without an API key prints a warning.
    """
    import torch
    import uvicorn
    from rich.console import Console

    console = Console(stderr=True)
    workers = int(workers)
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}.")
    torch.set_num_threads(max(1, _cpu_count() // workers))
    app = create_app(run, api_key=api_key, max_upload_mb=max_upload_mb, workers=workers)
    app.state.service.warmup()
    if not _is_loopback(host) and not api_key:
        console.print(
            f"[yellow]warning:[/] serving on {host} without an API key: anyone who can reach this "
            "port can upload images. Set --api-key (or LUNGXRAY_API_KEY)."
        )
    shown = f"[{host}]" if ":" in host else host
    console.print(f"lungxray serving {run} at http://{shown}:{port}/  (API docs: /docs). {DISCLAIMER}")
    uvicorn.run(
        app,
        host=host,
        port=int(port),
        log_level="info",
        timeout_keep_alive=5,
        limit_concurrency=app.state.service.capacity + 64,  # beyond this uvicorn answers 503 itself
        server_header=False,
    )
