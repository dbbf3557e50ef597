"""Read any supported image file (PNG, JPEG, TIFF, BMP, GIF, DICOM) as float32 grayscale in [0, 1].

One reader for training, prediction and the web upload, so every stage sees the same pixels. Sizes are
checked from the header before any pixel is decoded (decompression bombs never allocate), and every
failure, whatever PIL or pydicom raised, becomes an ``ImageReadError`` naming the file and the reason.

Scaling: 8-bit images are divided by 255 and 16-bit ones by 65535 (so a constant PNG keeps its grey
level); DICOM pixels go through the modality LUT, then the VOI LUT / window, then min-max to [0, 1]
(so a constant DICOM reads as all zeros). Colour (RGB, RGBA, CMYK, palette, LA) becomes ITU-R 601
luminance; alpha is dropped, not composited.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from lungxray.errors import ImageReadError

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm", ".dicom"}
)
DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 8  # pixels; smaller images carry no usable anatomy
MAX_ASPECT = 10.0  # longer side / shorter side

_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
# PIL plugins we accept; others (EPS runs Ghostscript, PSD, ICO...) are refused as "not an image".
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DIB", "GIF")  # JPEG also opens MPO
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # ITU-R 601-2, as PIL's convert("L")
_PYDICOM_HINT = 'reading DICOM needs pydicom: pip install "lungxray[dicom]"'


@dataclass
class ImageInfo:
    """What the original file was, before conversion: pixel size, PIL mode (or DICOM photometric), format."""

    width: int
    height: int
    mode: str
    format: str


def is_image_path(path: str | Path) -> bool:
    """True if ``path`` has a supported image suffix (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as a (H, W) float32 grayscale array in [0, 1].

    Args:
        path: a PNG, JPEG, TIFF, BMP, GIF or DICOM file (DICOM found by content or suffix).
        max_pixels: refuse images with more pixels than this (checked before decoding).

    Returns:
        (H, W) float32, finite, in [0, 1].

    Raises:
        ImageReadError: missing, empty, not an image, truncated/corrupt, too many pixels, smaller than
            8 px a side, aspect ratio beyond 10:1, or DICOM without (decodable) pixel data.

    >>> img = read_image("chest.png")  # doctest: +SKIP
    >>> img.shape, img.dtype  # doctest: +SKIP
    """
    return read_image_with_info(path, max_pixels=max_pixels)[0]


def read_image_with_info(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, ImageInfo]:
    """Like ``read_image``, also returning the original file's ``ImageInfo`` (size, mode, format)."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "file not found")
    if p.is_dir():
        raise ImageReadError(p, "is a directory, not an image file")
    try:
        size = p.stat().st_size
        fp = open(p, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as e:
        raise ImageReadError(p, f"cannot open file: {e.strerror or e}") from e
    try:
        if size == 0:
            raise ImageReadError(p, "empty file (0 bytes)")
        return _read_stream(fp, str(p), max_pixels)
    finally:
        fp.close()


def read_image_bytes(
    data: bytes, *, name: str = "<upload>", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read an in-memory image (e.g. an upload) exactly as ``read_image`` reads a file.

    ``name`` is used in error messages and, by its suffix, to recognise DICOM without the 'DICM' preamble.
    Returns (H, W) float32 in [0, 1]; raises ImageReadError like ``read_image``.
    """
    if len(data) == 0:
        raise ImageReadError(name, "empty file (0 bytes)")
    return _read_stream(io.BytesIO(bytes(data)), name, max_pixels)[0]


# --------------------------------------------------------------------------------------------- dispatch


def _read_stream(fp: BinaryIO, name: str, max_pixels: int) -> tuple[np.ndarray, ImageInfo]:
    """Decode from an open binary stream; maps any decoder failure to ImageReadError."""
    head = fp.read(132)
    fp.seek(0)
    has_magic = head[128:132] == b"DICM"
    try:
        if has_magic or Path(name).suffix.lower() in _DICOM_SUFFIXES:
            img, info = _read_dicom(fp, name, max_pixels, force=not has_magic)
        else:
            img, info = _read_pil(fp, name, max_pixels)
    except ImageReadError:
        raise
    except MemoryError as e:
        raise ImageReadError(name, "not enough memory to decode the image") from e
    except Exception as e:  # PIL/pydicom raise OSError, ValueError, struct.error, SyntaxError, ...
        raise ImageReadError(name, f"corrupt or unreadable image data ({type(e).__name__}: {e})") from e
    if not np.isfinite(img).all():
        raise ImageReadError(name, "pixel values include NaN or infinity")
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False), info


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse bombs, tiny and extremely elongated images from header dimensions alone."""
    if width * height > max_pixels:
        raise ImageReadError(
            name,
            f"too many pixels ({width}x{height} = {width * height:,} > {max_pixels:,}); "
            "possible decompression bomb — downscale the image or raise max_pixels",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageReadError(name, f"image too small ({width}x{height}); need at least {MIN_SIDE} px a side")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT:
        raise ImageReadError(
            name, f"extreme aspect ratio {ratio:.1f}:1 ({width}x{height}); at most {MAX_ASPECT:g}:1 accepted"
        )


# ------------------------------------------------------------------------------------------------- PIL

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _read_pil(fp: BinaryIO, name: str, max_pixels: int) -> tuple[np.ndarray, ImageInfo]:
    """Open lazily, check the header size, force a full decode, convert to gray float."""
    Image.init()  # registers all PIL plugins (idempotent), so every name in _PIL_FORMATS is known
    try:
        with warnings.catch_warnings():
            # Our max_pixels check below replaces PIL's bomb warning; PIL's hard error (2x its limit) remains.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=_PIL_FORMATS)
    except Image.UnidentifiedImageError as e:
        raise ImageReadError(
            name, "not a recognised image format (supported: PNG, JPEG, TIFF, BMP, GIF, DICOM)"
        ) from e
    except Image.DecompressionBombError as e:
        raise ImageReadError(name, f"too many pixels; possible decompression bomb ({e})") from e
    with im:
        info = ImageInfo(int(im.width), int(im.height), str(im.mode), str(im.format))
        _check_size(name, im.width, im.height, max_pixels)
        try:
            im.load()  # full decode now, so truncation surfaces here and not later
        except OSError as e:
            raise ImageReadError(name, f"truncated or corrupt image data ({e})") from e
        im = _apply_exif_orientation(im)
        return _pil_to_gray(im), info


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF Orientation tag says (phone photos of films); unreadable EXIF is ignored."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not make a decodable image unreadable
        return im
    method = _TRANSPOSE.get(orientation)
    return im.transpose(method) if method is not None else im


def _pil_to_gray(im: Image.Image) -> np.ndarray:
    """(H, W) float64 in [0, 1] from any PIL mode; 16-bit modes keep their precision."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float64)
    if mode == "L":
        return np.asarray(im, dtype=np.float64) / 255.0
    if mode == "LA":
        return np.asarray(im, dtype=np.float64)[..., 0] / 255.0
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float64) / 65535.0
    if mode == "I":
        arr = np.asarray(im).astype(np.float64)
        if arr.min() >= 0 and arr.max() <= 65535:  # PIL stores 16-bit PNG/TIFF as "I" in some versions
            return arr / 65535.0
        return _minmax(arr)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            return arr  # rejected by the caller's finiteness check
        return arr if arr.min() >= 0 and arr.max() <= 1 else _minmax(arr)
    if mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        rgb = np.asarray(im, dtype=np.float64)[..., :3]
    else:  # P, PA, CMYK, YCbCr, LAB, HSV, La...: let PIL do the colour conversion
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    return rgb @ _LUMA / 255.0


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by min and max; a constant array becomes zeros."""
    lo, hi = float(arr.min()), float(arr.max())
    if not hi > lo:
        return np.zeros_like(arr, dtype=np.float64)
    return (arr - lo) / (hi - lo)


# ----------------------------------------------------------------------------------------------- DICOM


def _read_dicom(fp: BinaryIO, name: str, max_pixels: int, force: bool) -> tuple[np.ndarray, ImageInfo]:
    """Header checks, then first frame -> modality LUT -> VOI LUT/window -> min-max (MONOCHROME1 inverted)."""
    try:
        import pydicom
        from pydicom import pixels
        from pydicom.errors import InvalidDicomError
    except ImportError as e:
        raise ImageReadError(name, _PYDICOM_HINT) from e

    try:
        ds = pydicom.dcmread(fp, force=force)
    except InvalidDicomError as e:
        raise ImageReadError(name, f"not a valid DICOM file ({e})") from e
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        why = "no pixel data" if "SOPClassUID" in ds or not force else "not a DICOM file, or no pixel data"
        raise ImageReadError(
            name, f"unsupported DICOM: {why} (e.g. a structured report or presentation state)"
        )
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise ImageReadError(name, "unsupported DICOM: Rows/Columns missing")
    _check_size(name, int(cols), int(rows), max_pixels)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    info = ImageInfo(int(cols), int(rows), photometric, "DICOM")

    tsyntax = _transfer_syntax(ds)
    if tsyntax is not None and tsyntax.is_compressed:
        try:
            decoder = pixels.get_decoder(tsyntax)
        except NotImplementedError as e:
            raise ImageReadError(
                name, f"unsupported DICOM: no decoder for transfer syntax {tsyntax.name}"
            ) from e
        if not decoder.is_available:
            need = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
            raise ImageReadError(
                name,
                f"unsupported DICOM: compressed transfer syntax '{tsyntax.name}' needs a decoder that is "
                f"not installed ({need})",
            )

    ds.pixel_array_options(index=0)  # decode only the first frame of a multi-frame file
    arr = ds.pixel_array
    samples = int(ds.get("SamplesPerPixel", 1))
    if photometric == "PALETTE COLOR":
        rgb = pixels.apply_color_lut(arr, ds)  # uint8 or uint16, by the LUT's entry size
        return rgb.astype(np.float64) @ _LUMA / float(np.iinfo(rgb.dtype).max), info
    if samples == 3 or arr.ndim == 3:  # RGB / YBR (pydicom converts YBR to RGB)
        return arr[..., :3].astype(np.float64) @ _LUMA / _colour_max(ds), info

    arr = pixels.apply_modality_lut(arr, ds)
    arr = pixels.apply_voi_lut(arr, ds)
    out = _minmax(np.asarray(arr, dtype=np.float64))
    if photometric == "MONOCHROME1":  # low values are white in MONOCHROME1
        out = 1.0 - out if out.max() > 0 else out
    return out, info


def _transfer_syntax(ds: object) -> object:
    """The dataset's transfer syntax UID; files without file meta (old ACR-NEMA style) get the one read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return meta.TransferSyntaxUID
    implicit, little = ds.original_encoding
    if implicit is None:  # encoding unknown: the DICOM default
        implicit, little = True, True
    uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid
    return uid


def _colour_max(ds: object) -> float:
    """Full-scale value of a colour DICOM's samples (255 for 8-bit)."""
    bits = int(getattr(ds, "BitsStored", None) or getattr(ds, "BitsAllocated", 8) or 8)
    return float(2**bits - 1)
