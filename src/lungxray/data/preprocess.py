"""Preprocessing: a decoded (H, W) float image in [0, 1] -> the model's (S, S) uint8 input.

The one definition that training (via the cache), evaluation, predict, serve and ONNX export
share: a change here changes what every stage feeds the model (bump ``data.cache.CACHE_FORMAT``
with it). ``to_model_input`` is the default pipeline; the lung-focused options (``lungxray.focus``,
docs/lungs.md) compose the pure operations below around the same resize and quantisation:

* ``suppress_markers`` (native resolution) -> crop to ``lung_box`` (``crop_to_box``) ->
  ``resize_content`` -> ``apply_window`` (CLAHE / percentile, on the float content) -> blank outside
  the lungs -> ``finish`` (round to uint8, pad).

Nothing here imports torch or the lung model (``segmentation`` imports this module).
"""

from __future__ import annotations

import numpy as np

from lungxray.config import RESIZE_MODES, WINDOWS
from lungxray.errors import check_option

MIN_LUNG_AREA = 0.05  # a lung mask covering less of the image is implausible: whole image used
MAX_LUNG_AREA = 0.90  # ... and so is one covering nearly all of it
CLAHE_TILES = 8  # tiles per side
CLAHE_CLIP = 2.0  # histogram clip, in multiples of the uniform bin count (OpenCV's clipLimit)
PERCENTILES = (1.0, 99.0)  # percentile window: these map to 0 and 1
MARKER_LEVEL = 0.5  # marker pixels are at least this bright ...
MARKER_CONTRAST = 0.25  # ... and this much brighter than their local background (white top-hat)
MARKER_SIDE = 0.06  # the top-hat's square, as a fraction of the longer side (wider than a letter)
MARKER_MAX_AREA = 0.02  # a bright component larger than this share of the image is anatomy, not text
MARKER_RING_BRIGHT = 0.25  # ... and so is one whose surrounding ring is more than this share bright


def _check_size(size: int) -> int:
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return int(size)


def _as_image(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ValueError(f"expected a (H, W) image, got shape {arr.shape}")
    return arr


def resize_content(img: np.ndarray, size: int, resize: str = "stretch") -> np.ndarray:
    """(H, W) float [0, 1] -> the resized content, float32: (size, size) for "stretch", the aspect-kept
    (h, w) with max(h, w) == size for "pad" (before padding; ``finish`` pads).

    PIL's BILINEAR on the float ("F") image: PIL widens the filter when shrinking, so it is
    antialiased (like torchvision's ``antialias=True``) and, unlike LANCZOS, never overshoots at sharp
    edges. ``reducing_gap=3`` box-reduces large images first (several times faster, visually identical).
    """
    from PIL import Image

    check_option(resize, RESIZE_MODES, "resize mode")
    size = _check_size(size)
    arr = _as_image(img)
    h, w = arr.shape
    if resize == "stretch":
        out_w, out_h = size, size
    else:
        scale = size / max(h, w)
        out_w = min(size, max(1, round(w * scale)))
        out_h = min(size, max(1, round(h * scale)))
    if (out_w, out_h) == (w, h):
        return arr
    pil = Image.fromarray(np.ascontiguousarray(arr))  # mode "F"
    pil = pil.resize((out_w, out_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(pil, dtype=np.float32)


def finish(content: np.ndarray, size: int, resize: str = "stretch") -> np.ndarray:
    """Resized float content (from ``resize_content``) -> (size, size) uint8 ``round(255 * value)``,
    centred on a black (0) square for "pad"."""
    small = np.clip(np.rint(np.asarray(content, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    if resize == "stretch":
        return small
    out = np.zeros((size, size), np.uint8)
    out_h, out_w = small.shape
    top, left = (size - out_h) // 2, (size - out_w) // 2
    out[top : top + out_h, left : left + out_w] = small
    return out


def to_model_input(img: np.ndarray, size: int, resize: str = "stretch") -> np.ndarray:
    """Resize a decoded image to the model's input: THE default preprocessing of training and prediction.

    Args:
        img: (H, W) float image in [0, 1] (as returned by ``imageio.read_image``).
        size: output side in pixels.
        resize: ``"stretch"`` (to size x size, aspect ratio not kept) or ``"pad"`` (longer side fits,
            aspect ratio kept, centred, borders 0).

    Returns:
        (size, size) uint8 array, ``round(255 * value)`` (``finish(resize_content(...))``). Working in
        float keeps 12/16-bit precision until the final rounding.
    """
    check_option(resize, RESIZE_MODES, "resize mode")
    size = _check_size(size)
    return finish(resize_content(img, size, resize), size, resize)


# ------------------------------------------------------------------------------ intensity windows
def window_percentile(x: np.ndarray, lo: float = PERCENTILES[0], hi: float = PERCENTILES[1]) -> np.ndarray:
    """Float image -> float32 in [0, 1]: its ``lo``-th percentile maps to 0, its ``hi``-th to 1, clipped.
    A (nearly) flat image is returned unchanged."""
    x = np.asarray(x, np.float32)
    a, b = np.percentile(x, [lo, hi])
    if b - a < 1e-6:
        return x
    return np.clip((x - a) / (b - a), 0.0, 1.0).astype(np.float32)


def window_clahe(x: np.ndarray, tiles: int = CLAHE_TILES, clip: float = CLAHE_CLIP, bins: int = 256) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a float [0, 1] (h, w) image -> float32 [0, 1].

    The image is quantised to ``bins`` levels and cut into ``tiles`` x ``tiles`` tiles (fewer when it is
    smaller); each tile's histogram is clipped at ``clip`` x the uniform count (the excess spread over
    every bin) and its CDF is the tile's mapping; a pixel's value is the bilinear interpolation of the
    mappings of the four nearest tile centres (OpenCV's ``createCLAHE`` scheme, in numpy).
    """
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    h, w = x.shape
    q = np.rint(x * (bins - 1)).astype(np.int64)
    ty, tx = max(1, min(tiles, h)), max(1, min(tiles, w))
    ey, ex = np.linspace(0, h, ty + 1).round().astype(int), np.linspace(0, w, tx + 1).round().astype(int)
    row_t = np.searchsorted(ey[1:], np.arange(h), side="right")
    col_t = np.searchsorted(ex[1:], np.arange(w), side="right")
    tile = row_t[:, None] * tx + col_t[None, :]
    hist = np.bincount((tile * bins + q).ravel(), minlength=ty * tx * bins).reshape(ty * tx, bins).astype(np.float64)
    n = hist.sum(1, keepdims=True)
    limit = np.maximum(1.0, clip * n / bins)
    excess = np.maximum(hist - limit, 0).sum(1, keepdims=True)
    hist = np.minimum(hist, limit) + excess / bins
    maps = np.cumsum(hist, 1) / np.maximum(n, 1)  # (tiles, bins) in [0, 1]

    def axis(edges: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centres = (edges[:-1] + edges[1:] - 1) / 2.0
        pos = np.arange(length, dtype=np.float64)
        if len(centres) == 1:
            z = np.zeros(length, int)
            return z, z, np.zeros(length)
        i0 = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, len(centres) - 2)
        wgt = np.clip((pos - centres[i0]) / (centres[i0 + 1] - centres[i0]), 0.0, 1.0)
        return i0, i0 + 1, wgt

    y0, y1, wy = axis(ey, h)
    x0, x1, wx = axis(ex, w)
    wy, wx = wy[:, None], wx[None, :]

    def m(ry: np.ndarray, cx: np.ndarray) -> np.ndarray:
        return maps[ry[:, None] * tx + cx[None, :], q]

    out = (1 - wy) * ((1 - wx) * m(y0, x0) + wx * m(y0, x1)) + wy * ((1 - wx) * m(y1, x0) + wx * m(y1, x1))
    return out.astype(np.float32)


def apply_window(x: np.ndarray, window: str) -> np.ndarray:
    """``window`` "none" (unchanged) | "clahe" (``window_clahe``) | "percentile" (``window_percentile``)."""
    check_option(window, WINDOWS, "data.window")
    if window == "clahe":
        return window_clahe(x)
    if window == "percentile":
        return window_percentile(x)
    return x


# ---------------------------------------------------------------------------------- lung geometry
Box = tuple[float, float, float, float]  # (top, left, bottom, right) as fractions of the image side


def plausible_lungs(mask: np.ndarray) -> bool:
    """True when a (S, S) lung mask covers between MIN_LUNG_AREA and MAX_LUNG_AREA of the image."""
    area = float(np.asarray(mask, bool).mean()) if np.size(mask) else 0.0
    return MIN_LUNG_AREA <= area <= MAX_LUNG_AREA


def lung_box(mask: np.ndarray, margin: float = 0.1) -> Box:
    """(h, w) bool lung mask (not empty) -> its bounding box grown by ``margin`` x the box's side on every
    side, clipped to the image: (top, left, bottom, right) as fractions in [0, 1]."""
    mask = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        raise ValueError("empty lung mask: no bounding box")
    h, w = mask.shape
    top, bottom = rows[0] / h, (rows[-1] + 1) / h
    left, right = cols[0] / w, (cols[-1] + 1) / w
    dy, dx = margin * (bottom - top), margin * (right - left)
    return (max(0.0, top - dy), max(0.0, left - dx), min(1.0, bottom + dy), min(1.0, right + dx))


def box_pixels(box: Box, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Fraction box -> integer (top, left, bottom, right) pixel bounds in an image of ``shape`` (outward
    rounding; at least one pixel each way)."""
    h, w = shape
    top, left = int(np.floor(box[0] * h)), int(np.floor(box[1] * w))
    bottom, right = max(top + 1, int(np.ceil(box[2] * h))), max(left + 1, int(np.ceil(box[3] * w)))
    return max(0, top), max(0, left), min(h, bottom), min(w, right)


def crop_to_box(img: np.ndarray, box: Box | None) -> np.ndarray:
    """The part of a (H, W) array inside ``box`` (fractions; None = the whole array). Used on images
    AND on lung masks, so both are cropped identically at any resolution."""
    if box is None:
        return img
    top, left, bottom, right = box_pixels(box, img.shape[:2])
    return img[top:bottom, left:right]


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) bool -> (H, W) bool, nearest neighbour."""
    from PIL import Image

    mask = np.asarray(mask, bool)
    if mask.shape == tuple(shape):
        return mask
    pil = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(pil) >= 128


def dilate(mask: np.ndarray, fraction: float) -> np.ndarray:
    """(h, w) bool grown by ``fraction`` x the longer side (a square structuring element)."""
    from scipy import ndimage

    r = int(round(fraction * max(mask.shape)))
    if r < 1:
        return np.asarray(mask, bool)
    return ndimage.binary_dilation(mask, structure=np.ones((2 * r + 1, 2 * r + 1), bool))


# ------------------------------------------------------------------------------------ markers
def suppress_markers(img: np.ndarray, protect: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Burned-in text and side markers ("L", "R", hospital labels) -> local background. (H, W) float [0, 1].

    A marker is small, bright and much brighter than what surrounds it: candidates are pixels whose
    white top-hat (the image minus its grey opening by a square of ``MARKER_SIDE`` x the longer side)
    is at least ``MARKER_CONTRAST`` and whose value is at least ``MARKER_LEVEL``, joined into
    8-connected components after a closing (to merge the strokes of a letter or word). A component
    is a marker when it covers at most ``MARKER_MAX_AREA`` of the image and does not touch ``protect``
    (the dilated lung fields, (H, W) bool, when known), and its surrounding ring is mostly darker than
    ``MARKER_LEVEL`` (a bright ring means the tip of a bone or of the body, not a label). Bones are
    wider than the opening (no top-hat) or less contrasted. Its pixels, grown by one closing radius (the antialiased edge), are replaced by
    the grey opening (the local background). Returns (new image, number of markers removed).
    """
    from scipy import ndimage

    x = _as_image(img)
    h, w = x.shape
    side = max(3, round(MARKER_SIDE * max(h, w)) | 1)
    background = ndimage.grey_opening(x, size=(side, side))
    bright = (x - background >= MARKER_CONTRAST) & (x >= MARKER_LEVEL)
    if not bright.any():
        return x, 0
    r = max(1, round(0.005 * max(h, w)))
    se = np.ones((2 * r + 1, 2 * r + 1), bool)
    joined = ndimage.binary_closing(bright, structure=se) | bright
    lab, _ = ndimage.label(joined, structure=np.ones((3, 3), bool))
    out, removed = x.copy(), 0
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        y0, y1 = max(0, sl[0].start - 4 * r), min(h, sl[0].stop + 4 * r)
        x0, x1 = max(0, sl[1].start - 4 * r), min(w, sl[1].stop + 4 * r)
        here = lab[y0:y1, x0:x1] == i
        if here.sum() > MARKER_MAX_AREA * h * w:
            continue
        if protect is not None and (protect[y0:y1, x0:x1] & here).any():
            continue
        grown = ndimage.binary_dilation(here, structure=se)
        ring = ndimage.binary_dilation(grown, structure=se, iterations=2) & ~grown
        if ring.any() and (x[y0:y1, x0:x1][ring] >= MARKER_LEVEL).mean() > MARKER_RING_BRIGHT:
            continue  # the tip of a larger bright structure (a bone end, the body's edge), not a label
        out[y0:y1, x0:x1][grown] = background[y0:y1, x0:x1][grown]
        removed += 1
    return out, removed
