"""Inference for the web server: a bounded queue in front of a pool of worker threads.

The event loop never runs a model: each request is handed to a ``ThreadPoolExecutor`` with one thread
per worker, and each worker thread holds its own ``Predictor`` (so Grad-CAM's hooks never meet another
request's forward pass). Admission is bounded: at most ``queue_size`` requests (running + waiting)
are accepted; the next gets 503 with a ``Retry-After`` estimated from recent latencies, instead of an
ever-growing backlog that would time out anyway.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from lungxray.errors import ConfigError, LungXrayError
from lungxray.runcard import RunCard

DISPLAY_MAX = 512  # longest side of the images returned for display (px)


class Busy(Exception):
    """The queue is full: ``retry_after`` seconds is a fair wait before trying again."""

    def __init__(self, retry_after: int, pending: int):
        super().__init__(f"the server is busy ({pending} requests in progress); retry in {retry_after} s.")
        self.retry_after = retry_after


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _resize_unit(arr: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of a float (S, S) map in [0, 1] to (side, side)."""
    from PIL import Image

    if arr.shape == (side, side):
        return arr.astype(np.float32)
    out = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32)).resize(
        (side, side), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(out, np.float32), 0.0, 1.0)


class InferenceService:
    """Loads a run ``workers`` times and answers ``analyze`` calls off the event loop, boundedly.

    Args:
        run: the run directory.
        workers: inference threads (>= 1), each with its own ``Predictor``.
        queue_size: requests admitted at once, running + waiting (default ``4 * workers``).

    Raises:
        ConfigError: workers or queue_size below 1. RunError: the run cannot be loaded.
    """

    def __init__(self, run: str | os.PathLike, *, workers: int = 1, queue_size: int | None = None):
        from lungxray.predict import Predictor

        if int(workers) < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}.")
        capacity = 4 * int(workers) if queue_size is None else int(queue_size)
        if capacity < 1:
            raise ConfigError(f"queue_size must be at least 1, got {queue_size}.")
        self.workers = int(workers)
        self.capacity = capacity
        self.predictors = [Predictor.load(run) for _ in range(self.workers)]
        self.card: RunCard = self.predictors[0].card
        self.run_dir = self.predictors[0].run_dir
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for p in self.predictors:
            self._free.put(p)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="lungxray-infer")
        self._pending = 0  # admitted and not finished; touched on the event loop thread only
        self._mean_seconds = 1.0  # running mean of one request's service time, for Retry-After

    # ------------------------------------------------------------------------------ admission

    @property
    def pending(self) -> int:
        """Requests admitted and not finished (running + waiting)."""
        return self._pending

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the backlog divided among the workers (1..60)."""
        return int(min(60, max(1, math.ceil(self._mean_seconds * self._pending / self.workers))))

    def _release(self) -> None:
        self._pending = max(0, self._pending - 1)

    def admit(self) -> None:
        """Take a queue slot before the upload is read (on the event loop); give it back with
        ``release`` or hand it to ``analyze(..., admitted=True)``.

        Raises:
            Busy: ``capacity`` requests are already being read, running or waiting.
        """
        if self._pending >= self.capacity:
            raise Busy(self.retry_after(), self._pending)
        self._pending += 1

    def release(self) -> None:
        """Give back a slot taken by ``admit`` that never reached ``analyze``."""
        self._release()

    # ------------------------------------------------------------------------------ inference

    async def analyze(
        self, data: bytes, name: str, *, heatmap: bool = True, admitted: bool = False
    ) -> dict[str, Any]:
        """``analyze_sync`` on a worker thread, if the queue has room (``admitted``: the caller
        already holds a slot from ``admit``, which this call now owns and releases).

        The slot is released when the worker really finishes (not when a disconnected client's
        coroutine is cancelled), so ``capacity`` bounds the work the server holds.

        Raises:
            Busy: ``capacity`` requests are already running or waiting.
            ImageReadError: the bytes are not a readable image.
        """
        if not admitted:
            self.admit()
        loop = asyncio.get_running_loop()
        submitted = time.perf_counter()

        def finished(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed at shutdown
                loop.call_soon_threadsafe(self._release)

        try:
            future = self._executor.submit(self.analyze_sync, data, name, heatmap, submitted)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(finished)
        return await asyncio.wrap_future(future)

    def analyze_sync(
        self, data: bytes, name: str, heatmap: bool = True, submitted: float | None = None
    ) -> dict[str, Any]:
        """Decode, predict and (optionally) explain one uploaded image with a free predictor.

        Returns {"prediction": Prediction, "timing": {stage: seconds}, and with ``heatmap``
        "image_png", "heatmap_png", "overlay_png" (data URLs), "heatmap_target"}; raises
        ImageReadError when the bytes are not a readable image.
        """
        waited = 0.0 if submitted is None else time.perf_counter() - submitted
        start = time.perf_counter()
        predictor = self._free.get()
        try:
            out = _analyze(predictor, data, name, heatmap)
        finally:
            self._free.put(predictor)
            # A running mean of the service time (a lost update under a race is harmless).
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.perf_counter() - start)
        out["timing"]["queue"] = waited
        return out

    def with_predictor(self, fn: Any) -> Any:
        """``fn(predictor)`` with a free predictor of the pool (on the calling thread)."""
        predictor = self._free.get()
        try:
            return fn(predictor)
        finally:
            self._free.put(predictor)

    def warmup(self) -> None:
        """Run every predictor once on a synthetic image, so the first upload does not pay for the
        lazy imports (Grad-CAM, matplotlib) and the model copies (seconds on a busy CPU)."""
        from lungxray.explain import to_png_bytes

        side = max(64, self.card.input_size)
        ramp = np.linspace(0, 255, side * side, dtype=np.float32).reshape(side, side).astype(np.uint8)
        png = to_png_bytes(ramp)
        for _ in self.predictors:  # the pool is FIFO: each call takes the next predictor
            self.analyze_sync(png, "warmup.png", True)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _analyze(predictor: Any, data: bytes, name: str, heatmap: bool) -> dict[str, Any]:
    """One upload through the prediction pass (decoded once), then Grad-CAM on the same record."""
    from lungxray.data import imageio
    from lungxray.errors import ImageReadError
    from lungxray.predict import Source, predict_records

    # The server's lower pixel cap: many decodes may run at once.
    source = Source(
        name, lambda: imageio.read_image_bytes(data, name=name, max_pixels=imageio.SERVER_MAX_PIXELS)
    )
    rec = next(predict_records(predictor, [source], batch_size=1))
    if rec.error is not None:
        raise ImageReadError(name, rec.error)
    timing = {"decode": rec.seconds["decode"], "predict": rec.seconds["predict"]}
    out: dict[str, Any] = {"prediction": rec.prediction}
    if heatmap:
        t0 = time.perf_counter()
        # The display image has the geometry of the model input (same pipeline: resize rule, lung
        # crop / mask), at a readable size, so the (S, S) heatmap lies exactly on it.
        side = int(min(DISPLAY_MAX, max(predictor.input_size, *rec.image.shape)))
        shown = predictor.preprocessor(rec.image, side)
        rec.image = None  # the display copy is all that is needed from here on
        out["image_png"] = _data_url(_png(shown))
        out.update(_heatmap_images(predictor, rec, shown))
        timing["heatmap"] = time.perf_counter() - t0
    out["timing"] = timing
    return out


def _png(arr: np.ndarray) -> bytes:
    from lungxray.explain import to_png_bytes

    return to_png_bytes(arr)


def _heatmap_images(predictor: Any, rec: Any, shown: np.ndarray) -> dict[str, Any]:
    """Grad-CAM of the record's explained class -> colourised RGBA and blended overlay PNG data URLs."""
    from lungxray.explain import colorize, explain_record, overlay

    target = predictor.card.explain_target(rec.prob)  # the one rule: binary positive, else most likely
    try:
        heat = explain_record(predictor, rec, [target])[target]
    except LungXrayError as exc:  # e.g. an MLP has no spatial map: the prediction still stands
        return {"heatmap_target": None, "heatmap_error": str(exc)}
    big = _resize_unit(heat, shown.shape[0])
    return {
        "heatmap_target": target,
        "heatmap_png": _data_url(_png(colorize(big))),
        "overlay_png": _data_url(_png(overlay(shown, big, 0.45))),
    }
