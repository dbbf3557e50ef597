"""Read any supported image file (PNG, JPEG, TIFF, BMP, GIF, DICOM) as float32 grayscale in [0, 1].

One reader for training, prediction and the web upload, so every stage sees the same pixels. Sizes are
checked from the header before any pixel is decoded (decompression bombs never allocate), and every
failure, whatever PIL or pydicom raised, becomes an ``ImageReadError`` naming the file and the reason.

Memory: pixels are converted to float32 in strips of about a million pixels (PIL images and DICOM
frames alike), each strip computed in float64 exactly as the whole image was before, so a W x H image
costs the decoder's own pixels plus the float32 result (4 bytes a pixel) and a few tens of MB, never a
full-size float64 copy (50 Mpx: 16-bit PNG ~0.3 GB, RGB PNG ~0.45 GB peak growth, was 1.0 and 1.7 GB).
``SERVER_MAX_PIXELS`` is the lower cap meant for a server; the library default stays
``DEFAULT_MAX_PIXELS``. Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` is set to the cap when a file
is opened (``apply_pil_pixel_limit``), never at import.

Compressed DICOM (``data.dicom``): the first frame's embedded size (JPEG SOF, JPEG 2000 SIZ, RLE header
and decoded segment lengths) is checked against Rows x Columns x SamplesPerPixel x BitsAllocated before the
decoder runs, and a Deflated dataset is inflated once with a byte limit before pydicom inflates it; a
file that disagrees is refused, so a small file cannot make a decoder allocate far more than its header
announced. Multi-frame files: the first frame is read (see ``_read_dicom``).

Scaling: 8-bit images are divided by 255 and 16-bit gray ones by their bit depth's full scale (PNG sBIT
/ TIFF MaxSampleValue when present, else 4095 if no pixel exceeds it, else 65535: see
``_uint16_full_scale``), so a constant PNG keeps its grey level; DICOM pixels go through the modality LUT,
then the VOI LUT / window, then min-max to [0, 1] (so a constant DICOM reads as all zeros, and 12-bit
data spanning 0..4095 reads the same from a PNG and from a DICOM with BitsStored=12). Colour (RGB, RGBA,
CMYK, palette, LA) becomes ITU-R 601 luminance; alpha is dropped, not composited.
"""

from __future__ import annotations

import functools
import io
import struct
import threading
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
DEFAULT_MAX_PIXELS = 50_000_000  # library default (CLI, training): ~0.5 GB peak for a 50 Mpx image
SERVER_MAX_PIXELS = 25_000_000  # what a server should pass as max_pixels (many decodes may run at once)
MIN_SIDE = 8  # pixels; smaller images carry no usable anatomy
MAX_ASPECT = 10.0  # longer side / shorter side

_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
# PIL plugins we accept; others (EPS runs Ghostscript, PSD, ICO...) are refused as "not an image".
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DIB", "GIF")  # JPEG also opens MPO
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # ITU-R 601-2, as PIL's convert("L")
_PYDICOM_HINT = 'reading DICOM needs pydicom: pip install "lungxray[dicom]"'
_STRIP_PIXELS = 1 << 20  # pixels converted per strip: bounds the float64 scratch of a colour strip to ~32 MB
# Exactly what the float64 path gave (x / 255 in float64, then rounded to float32), as lookup tables.
_LUT8 = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
_PIL_LIMIT_LOCK = threading.Lock()


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
    if img.dtype == np.float32:  # clip in place: no second full-size copy
        return np.clip(img, 0.0, 1.0, out=img), info
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False), info


def apply_pil_pixel_limit(max_pixels: int) -> None:
    """Set Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` to ``max_pixels``.

    Pillow warns above this many pixels and refuses twice as many, in every ``Image.open`` of the process
    (thumbnails, perceptual hashes, other libraries), not only ours. Nothing is changed at import time:
    ``read_image*`` applies its ``max_pixels`` this way right before opening a file with PIL (under a lock,
    so concurrent reads with different caps never see each other's value while opening), and a server
    can call it once at start-up with ``SERVER_MAX_PIXELS`` for the rest of the process.
    """
    if int(max_pixels) <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    Image.MAX_IMAGE_PIXELS = int(max_pixels)


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
    """Open lazily, check the header size, force a full decode, convert to gray float32 in strips."""
    Image.init()  # registers all PIL plugins (idempotent), so every name in _PIL_FORMATS is known
    try:
        with warnings.catch_warnings(), _PIL_LIMIT_LOCK:
            # Our max_pixels check below replaces PIL's bomb warning; PIL's hard error (2x its limit) remains.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            apply_pil_pixel_limit(max(1, int(max_pixels)))  # max_pixels <= 0: refused by _check_size
            im = Image.open(fp, formats=_PIL_FORMATS)
    except Image.UnidentifiedImageError as e:
        raise ImageReadError(
            name, "not a recognised image format (supported: PNG, JPEG, TIFF, BMP, GIF, DICOM)"
        ) from e
    except Image.DecompressionBombError as e:
        raise ImageReadError(name, f"too many pixels; possible decompression bomb ({e})") from e
    oriented = im
    try:
        info = ImageInfo(int(im.width), int(im.height), str(im.mode), str(im.format))
        _check_size(name, im.width, im.height, max_pixels)
        try:
            im.load()  # full decode now, so truncation surfaces here and not later
        except OSError as e:
            raise ImageReadError(name, f"truncated or corrupt image data ({e})") from e
        full_scale = _uint16_full_scale_from_header(im, fp)
        oriented = _apply_exif_orientation(im)
        if oriented is not im:
            im.close()  # free the unrotated pixels before the float32 result is allocated
        return _pil_to_gray(oriented, full_scale), info
    finally:
        oriented.close()
        im.close()


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF Orientation tag says (phone photos of films); unreadable EXIF is ignored."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not make a decodable image unreadable
        return im
    method = _TRANSPOSE.get(orientation)
    return im.transpose(method) if method is not None else im


def _strips(im: Image.Image, convert: str | None = None, dtype: type | None = None):
    """Yield (y0, y1, array of rows y0:y1) of a loaded PIL image, about _STRIP_PIXELS pixels at a time."""
    step = max(1, _STRIP_PIXELS // max(1, im.width))
    for y0 in range(0, im.height, step):
        y1 = min(im.height, y0 + step)
        part = im if step >= im.height else im.crop((0, y0, im.width, y1))  # small image: no copy
        if convert is not None:
            part = part.convert(convert)
        yield y0, y1, np.asarray(part, dtype=dtype)


def _pil_to_gray(im: Image.Image, full_scale: int | None = None) -> np.ndarray:
    """(H, W) float32 in [0, 1] from any PIL mode; 16-bit modes keep their precision.

    Converted strip by strip into one float32 array; each strip is computed exactly as the whole image
    was before (float64, then rounded to float32), so 8-bit results are bit-identical to that.
    ``full_scale`` is the 16-bit data's full-scale value when the file's header gave one (PNG sBIT,
    TIFF MaxSampleValue); otherwise ``_uint16_full_scale`` decides from the pixel values.
    """
    mode = im.mode
    out = np.empty((im.height, im.width), dtype=np.float32)
    if mode == "1":
        for y0, y1, a in _strips(im):
            out[y0:y1] = a
    elif mode in ("L", "LA"):
        for y0, y1, a in _strips(im):
            out[y0:y1] = _LUT8[a if a.ndim == 2 else a[..., 0]]
    elif mode.startswith("I;16") or mode == "I":
        lo, hi = _int_extrema(im)
        if mode == "I" and not (lo >= 0 and hi <= 65535):  # 32-bit data: min-max
            _minmax_strips(im, out, lo, hi)
        else:  # PIL stores 16-bit PNG/TIFF as "I" in some versions
            lut = _lut16(full_scale or _uint16_full_scale(hi))
            for y0, y1, a in _strips(im):
                out[y0:y1] = lut[a]
    elif mode == "F":
        lo, hi = np.inf, -np.inf
        for _, _, a in _strips(im):
            if not np.isfinite(a).all():
                out[...] = np.nan  # rejected by the caller's finiteness check
                return out
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
        if lo >= 0 and hi <= 1:
            for y0, y1, a in _strips(im):
                out[y0:y1] = a
        else:
            _minmax_strips(im, out, lo, hi)
    else:
        # RGB(A/X/a) directly; P, PA, CMYK, YCbCr, LAB, HSV, La...: PIL converts each strip to RGB
        convert = None if mode in ("RGB", "RGBA", "RGBX", "RGBa") else "RGB"
        for y0, y1, a in _strips(im, convert, np.float64):
            out[y0:y1] = a[..., :3] @ _LUMA / 255.0
    return out


def _int_extrema(im: Image.Image) -> tuple[int, int]:
    """(min, max) of an integer image; PIL's getextrema does not handle every I;16 variant (I;16B)."""
    try:
        lo, hi = im.getextrema()
        return int(lo), int(hi)
    except ValueError:
        lo, hi = None, None
        for _, _, a in _strips(im):
            lo = int(a.min()) if lo is None else min(lo, int(a.min()))
            hi = int(a.max()) if hi is None else max(hi, int(a.max()))
        return int(lo or 0), int(hi or 0)


def _minmax_strips(im: Image.Image, out: np.ndarray, lo: float, hi: float) -> None:
    """Fill ``out`` with the image min-max scaled by (lo, hi) in float64 per strip; constant -> zeros."""
    if not hi > lo:
        out[...] = 0.0
        return
    for y0, y1, a in _strips(im, dtype=np.float64):
        out[y0:y1] = (a - float(lo)) / (float(hi) - float(lo))


@functools.lru_cache(maxsize=8)
def _lut16(full_scale: int) -> np.ndarray:
    """float32 value of every uint16 code divided by ``full_scale`` (computed in float64, as before)."""
    lut = (np.arange(65536, dtype=np.float64) / float(full_scale)).astype(np.float32)
    lut.flags.writeable = False
    return lut


def _uint16_full_scale(max_value: int) -> int:
    """Full-scale value of 16-bit-container gray data without a header saying its bit depth.

    Rule: the brightest pixel picks the *container*, never the scale: ``max_value <= 4095`` means 12-bit
    data (full scale 4095, as a DICOM with BitsStored=12 spanning its range reads), anything brighter
    means 16-bit (65535). 12-bit detectors exported as 16-bit PNG/TIFF are the common case this fixes:
    divided by 65535 they reached the model at most 1/16 bright, nearly black.

    Trade-off, on purpose: a dark 12-bit image stays dark (scaled by 4095, not stretched by its own
    max, unlike a min-max rule), and a genuinely 16-bit image is only misread when *all* its pixels are
    below 4096, i.e. under 1/16 of full scale: it is then read 16x brighter (it would otherwise be nearly
    black to the model anyway). Around the threshold the rule is discontinuous (max 4095 vs 4096 differ
    by 16x), and 10- or 14-bit data is read as 12- or 16-bit; files that matter should say their depth
    with a PNG sBIT chunk or TIFF MaxSampleValue tag, which win over this rule.
    """
    return 4095 if max_value <= 4095 else 65535


def _uint16_full_scale_from_header(im: Image.Image, fp: BinaryIO) -> int | None:
    """The 16-bit gray data's full-scale value as the file declares it, or None if it does not.

    PNG: the sBIT chunk's significant bits (2**bits - 1). TIFF: MaxSampleValue (tag 281). Only for
    16-bit gray modes; anything implausible (0, more than 16 bits, fewer than 8) is ignored.
    """
    if not (im.mode.startswith("I;16") or im.mode == "I"):
        return None
    try:
        if im.format == "PNG":
            bits = _png_sbit(fp)
            return 2**bits - 1 if bits is not None and 8 <= bits <= 16 else None
        if im.format == "TIFF":
            value = im.tag_v2.get(281)  # type: ignore[attr-defined]
            if isinstance(value, tuple):
                value = max(value) if value else None
            return int(value) if value is not None and 255 <= int(value) <= 65535 else None
    except Exception:  # a header we cannot parse just means "not declared"
        return None
    return None


def _png_sbit(fp: BinaryIO) -> int | None:
    """Significant bits of a PNG's gray channel from its sBIT chunk (before IDAT), or None."""
    fp.seek(0)
    if fp.read(8) != b"\x89PNG\r\n\x1a\n":
        return None
    for _ in range(1024):  # chunks before IDAT; a bound, not a real limit
        head = fp.read(8)
        if len(head) < 8:
            return None
        length, ctype = struct.unpack(">I4s", head)
        if ctype in (b"IDAT", b"IEND"):
            return None
        if ctype == b"sBIT":
            data = fp.read(min(length, 4))
            return data[0] if data else None
        fp.seek(length + 4, io.SEEK_CUR)  # data + CRC
    return None


# ----------------------------------------------------------------------------------------------- DICOM


def _read_dicom(fp: BinaryIO, name: str, max_pixels: int, force: bool) -> tuple[np.ndarray, ImageInfo]:
    """Header checks, then first frame -> modality LUT -> VOI LUT/window -> min-max (MONOCHROME1 inverted)."""
    try:
        import pydicom
        from pydicom import pixels
        from pydicom.errors import InvalidDicomError
    except ImportError as e:
        raise ImageReadError(name, _PYDICOM_HINT) from e

    from lungxray.data import dicom as dicom_checks

    # Deflated datasets are inflated whole by pydicom: bound that first (pixels x up to 6 bytes + 16 MiB).
    problem = dicom_checks.deflated_size_problem(fp, max_pixels * 6 + 16 * 2**20)
    if problem is not None:
        raise ImageReadError(name, f"unsupported DICOM: {problem}")
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
    samples, bits = ds.get("SamplesPerPixel", 1), ds.get("BitsAllocated", 8)
    if samples not in (1, 3) or bits not in (1, 8, 16, 32, 64):
        raise ImageReadError(
            name,
            f"unsupported DICOM: SamplesPerPixel={samples}, BitsAllocated={bits} "
            "(expected 1 or 3 samples of 1, 8, 16, 32 or 64 bits)",
        )
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
        problem = dicom_checks.compressed_frame_problem(ds, tsyntax)
        if problem is not None:
            raise ImageReadError(name, f"refusing to decode compressed DICOM: {problem}")

    # Multi-frame: the first frame is the image, on purpose. A radiograph stored as several frames (a
    # processed copy, NumberOfFrames=1 written out) is still one radiograph, and decoding one frame keeps
    # memory bounded by Rows x Columns whatever NumberOfFrames says; only that frame is size-checked above.
    ds.pixel_array_options(index=0)
    arr = ds.pixel_array
    samples = int(ds.get("SamplesPerPixel", 1))
    # Everything below runs in strips of rows into one float32 array, each strip computed in float64
    # exactly as the whole image was before: memory is the decoded frame + float32 + a strip.
    out = np.empty(arr.shape[:2], dtype=np.float32)
    if photometric == "PALETTE COLOR":
        for y0, y1 in _row_strips(arr.shape):
            rgb = pixels.apply_color_lut(arr[y0:y1], ds)  # uint8 or uint16, by the LUT's entry size
            out[y0:y1] = rgb.astype(np.float64) @ _LUMA / float(np.iinfo(rgb.dtype).max)
        return out, info
    if samples == 3 or arr.ndim == 3:  # RGB / YBR (pydicom converts YBR to RGB)
        full = _colour_max(ds)
        for y0, y1 in _row_strips(arr.shape):
            out[y0:y1] = arr[y0:y1, :, :3].astype(np.float64) @ _LUMA / full
        return out, info

    def values(y0: int, y1: int) -> np.ndarray:  # modality LUT (rescale), then VOI LUT / window
        part = pixels.apply_voi_lut(pixels.apply_modality_lut(arr[y0:y1], ds), ds)
        return np.asarray(part, dtype=np.float64)

    lo, hi = np.inf, -np.inf  # first pass: the range, then min-max (MONOCHROME1 inverted) per strip
    for y0, y1 in _row_strips(arr.shape):
        v = values(y0, y1)
        if not np.isfinite(v).all():  # float pixel data with NaN/inf: refused by the caller
            out[...] = np.nan
            return out, info
        lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    if not hi > lo:  # constant: all zeros
        out[...] = 0.0
        return out, info
    for y0, y1 in _row_strips(arr.shape):
        v = (values(y0, y1) - lo) / (hi - lo)
        out[y0:y1] = 1.0 - v if photometric == "MONOCHROME1" else v  # low values are white in MONOCHROME1
    return out, info


def _row_strips(shape: tuple[int, ...]):
    """(y0, y1) row ranges of about _STRIP_PIXELS pixels each for an array of ``shape`` (rows first)."""
    width = max(1, int(shape[1]) if len(shape) > 1 else 1)
    step = max(1, _STRIP_PIXELS // width)
    for y0 in range(0, int(shape[0]), step):
        yield y0, min(int(shape[0]), y0 + step)


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
