"""The web page and REST API of one run (FastAPI): upload an X-ray, get label, probabilities, heatmap.

Endpoints:
    GET  /              the web page (static HTML + vanilla JS, no build step)
    GET  /health        {"status": "ok", "model_loaded": true, ...}; always open
    GET  /api/model     the model card: task, classes, threshold and how it was chosen, training
                        counts, test metrics with CIs (if evaluated), intended use, limitations
    POST /api/predict   multipart field ``file`` (or a raw body) -> JSON prediction; ``?heatmap=false``
                        skips Grad-CAM and the images
    GET  /metrics       Prometheus text: requests by route and status, latency, queue depth, OOD
                        rate, scores, drift (``serve/monitoring.py``); needs the key when one is set
    GET  /openapi.json  OpenAPI (/docs and /redoc are disabled: Swagger UI would load from a CDN)

Safety: with ``api_key`` every /api/* call (and /metrics) needs ``X-API-Key: <key>`` or
``Authorization: Bearer <key>`` (else 401). A queue slot is taken before the body is read (503 with
``Retry-After`` when full), so at most ``queue_size`` uploads are held in memory at once. Uploads are
held in memory only and refused with 413 past ``max_upload_mb`` (declared or streamed), 408 when
slower than ``body_timeout``; unreadable images get 422 with the reason; decoding is capped at
``SERVER_MAX_PIXELS``. Host / Origin checks and headers: ``serve/guard.py``; header deadlines and the
connection cap: ``serve/protocol.py``; drift reference: ``serve/drift.py``. Inference runs on worker
threads, never on the event loop. Decision support only.

FastAPI is imported here, at the top of this module: only ``lungxray serve`` (and tests) import it.

Example::

    app = create_app("runs/kermany", api_key="s3cret")     # then: uvicorn.run(app)
    run_server("runs/kermany", port=8000)                  # what `lungxray serve` does
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from lungxray import DISCLAIMER, __version__
from lungxray.data.imageio import SERVER_MAX_PIXELS, apply_pil_pixel_limit
from lungxray.errors import ConfigError, ImageReadError
from lungxray.gate import gate_flagged
from lungxray.serve.card import model_card
from lungxray.serve.guard import (
    LOOPBACK_HOSTS,
    HostOriginGuard,
    SecurityHeaders,
    is_loopback,
    key_checker,
    resolve_api_key,
    validate_api_key,
)
from lungxray.serve.service import Busy, InferenceService
from lungxray.serve.upload import UploadError, check_content_length, receive_upload, upload_kind

STATIC_DIR = Path(__file__).resolve().parent / "static"
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
    408: {"description": "Upload too slow"},
    413: {"description": "Upload larger than the limit"},
    415: {"description": "Unsupported Content-Type"},
    422: {"description": "Not a readable image (detail says why)"},
    503: {"description": "Queue full; see Retry-After"},
}
_CLOSE = {"Connection": "close"}  # an unread body must not keep the connection


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


def _drift_monitor(service: InferenceService, window: int, min_samples: int) -> tuple[Any, str]:
    """``(DriftMonitor or None, where its reference came from)`` for the service's run."""
    from lungxray.evaluation.shift import DriftMonitor
    from lungxray.serve.drift import load_reference

    def predict_paths(paths: list[Path]) -> list[Any]:
        return service.with_predictor(lambda p: p.predict_paths(paths, batch_size=16))

    ref, source = load_reference(service.run_dir, service.card, predict_paths)
    if ref is None:
        return None, source
    return DriftMonitor(ref, window=window, min_samples=min(min_samples, window)), source


def create_app(
    run: str | os.PathLike,
    *,
    api_key: str | None = None,
    max_upload_mb: float = 20,
    workers: int = 1,
    queue_size: int | None = None,
    allowed_hosts: Iterable[str] | None = None,
    body_timeout: float = 120.0,
    body_idle_timeout: float = 15.0,
    drift: bool = True,
    drift_window: int = 200,
    drift_min_samples: int = 50,
) -> FastAPI:
    """Build the FastAPI app for one run; the model is loaded now (errors surface before serving).

    Args:
        run: the run directory.
        api_key: if given (>= 16 characters), required on every /api/* call and /metrics.
        max_upload_mb: largest accepted file in MB (2**20 bytes); larger uploads get 413.
        workers: inference threads (each holds its own copy of the model).
        queue_size: requests being read + running + waiting at once (default ``4 * workers``); more
            get 503 before their body is read. Uploads held in memory: at most ``queue_size`` files.
        allowed_hosts: the Host names the server answers to (default: loopback names); ``"*"`` any.
        body_timeout / body_idle_timeout: seconds for a whole upload / between two chunks (else 408).
        drift: run the drift check (its reference may be computed now; see ``serve/drift.py``).
        drift_window / drift_min_samples: recent predictions compared / needed before a check.

    Raises:
        RunError: ``run`` is not a loadable run. ConfigError: a limit below its minimum, a short key.
    """
    from lungxray.serve.monitoring import Monitoring, MonitoringMiddleware

    max_bytes = int(float(max_upload_mb) * 2**20)
    if max_bytes < 1:
        raise ConfigError(f"max_upload_mb must be positive, got {max_upload_mb}.")
    if api_key is not None and not api_key.strip():
        raise ConfigError("the API key is empty; give a non-empty key or none.")
    api_key = validate_api_key(api_key)
    apply_pil_pixel_limit(SERVER_MAX_PIXELS)  # process-wide: any PIL decode in the server
    service = InferenceService(run, workers=workers, queue_size=queue_size)
    run_card = service.card
    classes = list(run_card.classes)
    index_html = _index_html()
    monitor, drift_source = (
        _drift_monitor(service, drift_window, drift_min_samples) if drift else (None, "off")
    )
    mon = Monitoring(drift=monitor)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        service.close()

    app = FastAPI(
        title="lungxray",
        version=__version__,
        description=f"Chest X-ray classifier `{run_card.name}` ({run_card.architecture}). {DISCLAIMER}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.max_bytes = max_bytes
    app.state.monitoring = mon
    app.state.drift_source = drift_source
    # The last added runs first: every request is counted, refusals of the guard carry the headers.
    app.add_middleware(HostOriginGuard, allowed_hosts=tuple(allowed_hosts or LOOPBACK_HOSTS))
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MonitoringMiddleware, monitoring=mon)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    guarded = [Depends(key_checker(api_key))]
    model_meta = {
        "name": run_card.name,
        "architecture": run_card.architecture,
        "created": run_card.created,
        "lungxray_version": run_card.lungxray_version,
    }

    def drift_status() -> dict[str, Any] | None:
        result = mon.drift()
        if result is None:
            return None
        return {
            "fired": result.fired,
            "p_value": result.p_value,
            "n": result.n_sample,
            "summary": result.summary,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(index_html)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the model is loaded; the queue; the drift check (a warning when it fires)."""
        drift_now = drift_status()
        warnings = []
        if drift_now is not None and drift_now["fired"]:
            warnings.append(
                "drift: recent images differ from the validation data "
                f"(p = {drift_now['p_value']:.2g}, n = {drift_now['n']}); results may be unreliable."
            )
        return {
            "status": "ok",
            "model_loaded": True,
            "model": run_card.name,
            "queue": {"pending": service.pending, "capacity": service.capacity, "workers": service.workers},
            "drift": drift_now,
            "warnings": warnings,
        }

    @app.get("/metrics", dependencies=guarded, include_in_schema=False)
    async def metrics() -> Response:
        mon.set_queue_depth(service.pending)
        body, ctype = mon.render()
        return Response(body, media_type=ctype)

    @app.get("/api/model", dependencies=guarded, responses={401: _ERRORS[401]})
    async def model() -> dict[str, Any]:
        """Model card: task, classes, threshold (chosen on validation), training counts, test metrics."""
        card = model_card(service.run_dir, run_card)
        card["max_upload_mb"] = max_bytes / 2**20
        card["drift_reference"] = drift_source
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
        try:  # everything that needs no body first: a refusal here reads nothing
            upload_kind(content_type)
            check_content_length(request.headers.get("content-length"), max_bytes + 16 * 1024)
            service.admit()
        except UploadError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=_CLOSE)
        except Busy as exc:
            headers = {"Retry-After": str(exc.retry_after), **_CLOSE}
            return JSONResponse({"detail": str(exc)}, status_code=503, headers=headers)
        mon.set_queue_depth(service.pending)
        handed_over = False
        try:
            upload = await receive_upload(
                request.receive,
                content_type,
                filename,
                max_bytes,
                timeout=body_timeout,
                idle_timeout=body_idle_timeout,
            )
            handed_over = True
            result = await service.analyze(upload.data, upload.name, heatmap=heatmap, admitted=True)
        except UploadError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=_CLOSE)
        except ImageReadError as exc:
            return JSONResponse({"detail": exc.reason, "filename": upload.name}, status_code=422)
        finally:
            if not handed_over:
                service.release()
        pred = result.pop("prediction")
        mon.observe_prediction(pred.ood_score, pred.ood, pred.score, gate_flagged(pred.warnings))
        timing = {k: round(v * 1000, 1) for k, v in result.pop("timing").items()}
        timing["total"] = round((time.perf_counter() - start) * 1000, 1)
        predictor = service.predictors[0]
        return {
            "filename": upload.name,
            "warnings": [str(w) for w in (getattr(pred, "warnings", None) or [])],
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


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def server_hosts(host: str, extra: Iterable[str] = ()) -> list[str]:
    """The Host names a server bound to ``host`` answers to: loopback names, the bind address (or,
    for a wildcard bind, this machine's names) and ``extra`` (e.g. the proxy's public name)."""
    import socket

    names = [*LOOPBACK_HOSTS, *extra]
    if host in ("0.0.0.0", "::", ""):
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        names.append(host)
    return names


def run_server(
    run: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    api_key_file: str | os.PathLike | None = None,
    insecure: bool = False,
    allowed_hosts: Iterable[str] = (),
    max_upload_mb: float = 20.0,
    workers: int = 1,
    header_timeout: float = 10.0,
    body_timeout: float = 120.0,
    max_connections: int = 1000,
) -> None:
    """Serve the web page and API with uvicorn until interrupted (what ``lungxray serve`` runs).

    The key comes from ``api_key``, ``api_key_file`` or ``$LUNGXRAY_API_KEY``. Binding beyond
    loopback without a key is refused unless ``insecure``. Torch gets ``cores // workers`` intra-op
    threads so the worker threads do not oversubscribe the CPU.

    Raises:
        ConfigError: a non-loopback bind without a key (and without ``insecure``), a bad key or limit.
    """
    import torch
    from rich.console import Console

    from lungxray.serve.protocol import serve_app

    console = Console(stderr=True)
    key = resolve_api_key(api_key, api_key_file)
    workers = int(workers)
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}.")
    if not is_loopback(host) and not key:
        if not insecure:
            raise ConfigError(
                f"refusing to serve on {host} without an API key: anyone who can reach this port could "
                "upload images. Set LUNGXRAY_API_KEY or --api-key-file (or pass --insecure)."
            )
        console.print(f"[yellow]warning:[/] serving on {host} without an API key (--insecure).")
    torch.set_num_threads(max(1, _cpu_count() // workers))
    app = create_app(
        run,
        api_key=key,
        max_upload_mb=max_upload_mb,
        workers=workers,
        allowed_hosts=server_hosts(host, allowed_hosts),
        body_timeout=body_timeout,
    )
    app.state.service.warmup()
    shown = f"[{host}]" if ":" in host else host
    console.print(f"lungxray serving {run} at http://{shown}:{port}/  (metrics: /metrics). {DISCLAIMER}")
    serve_app(app, host, port, header_timeout=header_timeout, max_connections=max_connections)
