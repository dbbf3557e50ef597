"""The decoding worker of streamed prediction, in a module that does not import torch: a spawned
worker process that unpickles ``decode_paths`` imports only this, numpy, PIL and the readers (and,
for a lung-focused ``lungxray.focus.Preprocessor``, what it needs: torch and the lung model)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from lungxray.errors import ImageReadError


def decode_paths(
    paths: Sequence[str], size: int, resize: str, preprocessor: Any = None, also: Any = None
) -> list[tuple[str, Any, str | None, float]]:
    """Worker: files -> [(path, model input (S, S) uint8 | None, error | None, seconds)].

    ``preprocessor``: the run's ``lungxray.focus.Preprocessor`` (None = ``to_model_input``). ``also``: a
    second preprocessor (e.g. the attached population gate's); then the model input is the pair
    ``(input, also(image))``, so that the decoded image never has to leave the worker."""
    from lungxray.data import imageio
    from lungxray.data.preprocess import to_model_input

    out = []
    for p in paths:
        t0 = time.perf_counter()
        try:
            img = imageio.read_image(p)
            x = to_model_input(img, size, resize) if preprocessor is None else preprocessor(img)
            if also is not None:
                x = (x, also(img))
            error = None
        except ImageReadError as exc:
            x, error = None, exc.reason
        except Exception as exc:  # a decoder bug on one file becomes that file's row
            x, error = None, f"{type(exc).__name__}: {exc}"
        out.append((p, x, error, time.perf_counter() - t0))
    return out
