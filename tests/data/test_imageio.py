"""Tests of lungxray.data.imageio on real files written under tmp_path and a few files of the real data."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA_ROOT  # noqa: E402
from lungxray.data.imageio import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    ImageInfo,
    is_image_path,
    read_image,
    read_image_bytes,
    read_image_with_info,
)
from lungxray.errors import ImageReadError, LungXrayError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

# ------------------------------------------------------------------------------------------- helpers


def gradient(h: int = 48, w: int = 64, top: int = 255) -> np.ndarray:
    """(h, w) int array rising smoothly from 0 (left) to ``top`` (right), with a vertical ripple."""
    x = np.linspace(0.0, 1.0, w)[None, :]
    y = np.linspace(0.0, 1.0, h)[:, None]
    v = 0.8 * x + 0.2 * (0.5 + 0.5 * np.sin(6 * y))
    v = (v - v.min()) / (v.max() - v.min())
    return np.round(v * top).astype(np.int64)


def make_dicom(
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    frames: int = 1,
    **elements: object,
) -> Dataset:
    """A minimal valid secondary-capture DICOM dataset holding uint16 ``stored`` (frames stacked first)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return ds


def write_dicom(path: Path, ds: Dataset) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def png_bytes_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` (CRC fixed): a decompression bomb header."""
    chunks = [b"\x89PNG\r\n\x1a\n"]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    chunks.append(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
    chunks.append(chunk(b"IDAT", zlib.compress(b"\x00" * 64)))
    chunks.append(chunk(b"IEND", b""))
    return b"".join(chunks)


def check_image(img: np.ndarray, shape: tuple[int, int]) -> None:
    assert img.dtype == np.float32
    assert img.shape == shape
    assert np.isfinite(img).all()
    assert img.min() >= 0.0 and img.max() <= 1.0


def expect_error(path: Path | str, reason: str, **kwargs: object) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    assert info.value.path == str(path)
    assert reason in info.value.reason, info.value.reason
    assert str(path) in str(info.value)
    return info.value


# -------------------------------------------------------------------------------------- PIL formats


def test_png_8bit_values_are_divided_by_255(tmp_path: Path) -> None:
    g = gradient()
    Image.fromarray(g.astype(np.uint8)).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    check_image(img, g.shape)
    np.testing.assert_allclose(img, g / 255.0, atol=1e-6)


def test_png_16bit_keeps_16bit_precision(tmp_path: Path) -> None:
    g = gradient(64, 96, top=65535)
    Image.fromarray(g.astype(np.uint16)).save(tmp_path / "a16.png")
    img, info = read_image_with_info(tmp_path / "a16.png")
    check_image(img, g.shape)
    assert len(np.unique(img)) > 256
    np.testing.assert_allclose(img, g / 65535.0, atol=1e-6)
    assert info == ImageInfo(96, 64, Image.open(tmp_path / "a16.png").mode, "PNG")
    assert info.mode.startswith("I")


def test_tiff_16bit_keeps_16bit_precision(tmp_path: Path) -> None:
    g = gradient(64, 96, top=65535)
    Image.fromarray(g.astype(np.uint16)).save(tmp_path / "a.tiff")
    img, info = read_image_with_info(tmp_path / "a.tiff")
    check_image(img, g.shape)
    assert len(np.unique(img)) > 256
    np.testing.assert_allclose(img, g / 65535.0, atol=1e-6)
    assert info.format == "TIFF"


def test_gray_jpeg_mean_matches_pil(tmp_path: Path) -> None:
    g = gradient()
    Image.fromarray(g.astype(np.uint8)).save(tmp_path / "g.jpg", quality=90)
    img, info = read_image_with_info(tmp_path / "g.jpg")
    check_image(img, g.shape)
    ref = np.asarray(Image.open(tmp_path / "g.jpg"), dtype=np.float64) / 255.0
    np.testing.assert_allclose(img, ref, atol=1e-6)
    assert abs(img.mean() - g.mean() / 255) < 0.01
    assert info == ImageInfo(64, 48, "L", "JPEG")


def rgb_image() -> np.ndarray:
    g = gradient()
    return np.stack([g, 255 - g, np.full_like(g, 40)], axis=-1).astype(np.uint8)


def test_rgb_jpeg_is_luminance(tmp_path: Path) -> None:
    Image.fromarray(rgb_image()).save(tmp_path / "c.jpeg", quality=95)
    img, info = read_image_with_info(tmp_path / "c.jpeg")
    check_image(img, (48, 64))
    pil_l = np.asarray(Image.open(tmp_path / "c.jpeg").convert("L"), dtype=np.float64) / 255.0
    assert np.abs(img - pil_l).max() <= 1.0 / 255 + 1e-6  # PIL rounds to uint8, we do not
    assert info.mode == "RGB"


def test_cmyk_jpeg_matches_pil_conversion(tmp_path: Path) -> None:
    Image.fromarray(rgb_image()).convert("CMYK").save(tmp_path / "k.jpg", quality=95)
    img, info = read_image_with_info(tmp_path / "k.jpg")
    check_image(img, (48, 64))
    ref = np.asarray(Image.open(tmp_path / "k.jpg").convert("L"), dtype=np.float64) / 255.0
    assert np.abs(img - ref).max() <= 2.0 / 255
    assert info.mode == "CMYK"
    # and it is the picture, not its negative
    direct = np.asarray(Image.fromarray(rgb_image()).convert("L"), dtype=np.float64) / 255.0
    assert np.abs(img - direct).mean() < 0.03


@pytest.mark.parametrize(
    ("suffix", "mode"),
    [(".bmp", "RGB"), (".bmp", "L"), (".png", "P"), (".png", "RGBA"), (".png", "LA"), (".tif", "RGB")],
)
def test_other_modes_give_luminance(tmp_path: Path, suffix: str, mode: str) -> None:
    base = Image.fromarray(rgb_image())
    im = base.convert(mode) if mode != "P" else base.quantize(64)
    path = tmp_path / f"x{suffix}"
    im.save(path)
    img, info = read_image_with_info(path)
    check_image(img, (48, 64))
    assert info.mode == Image.open(path).mode
    ref = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0
    assert np.abs(img - ref).max() <= 1.0 / 255 + 1e-6


def test_rgba_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    rgba = np.dstack([rgb_image(), np.zeros((48, 64), np.uint8)])  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    Image.fromarray(rgb_image()).save(tmp_path / "o.png")
    np.testing.assert_array_equal(read_image(tmp_path / "t.png"), read_image(tmp_path / "o.png"))
    assert read_image(tmp_path / "t.png").mean() > 0.2


def test_gif_reads_first_frame(tmp_path: Path) -> None:
    g = gradient().astype(np.uint8)
    frames = [Image.fromarray(g), Image.fromarray(255 - g)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "a.gif").n_frames == 2
    img, info = read_image_with_info(tmp_path / "a.gif")
    check_image(img, g.shape)
    assert np.abs(img - g / 255.0).mean() < 0.02
    assert info.format == "GIF"


def test_exif_orientation_is_applied_and_info_reports_the_file(tmp_path: Path) -> None:
    g = gradient().astype(np.uint8)  # 48 x 64, dark left, bright right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(g).save(tmp_path / "r.jpg", exif=exif, quality=95)
    img, info = read_image_with_info(tmp_path / "r.jpg")
    check_image(img, (64, 48))
    assert (info.width, info.height) == (64, 48)
    assert img[:8].mean() < img[-8:].mean()  # the left edge became the top


def test_constant_png_keeps_its_grey_level(tmp_path: Path) -> None:
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(tmp_path / "c.png")
    img = read_image(tmp_path / "c.png")
    np.testing.assert_allclose(img, 128 / 255, atol=1e-6)


def test_read_image_bytes_equals_read_image(tmp_path: Path) -> None:
    Image.fromarray(rgb_image()).save(tmp_path / "c.png")
    data = (tmp_path / "c.png").read_bytes()
    np.testing.assert_array_equal(read_image_bytes(data, name="c.png"), read_image(tmp_path / "c.png"))
    np.testing.assert_array_equal(read_image_bytes(bytearray(data)), read_image(tmp_path / "c.png"))


# -------------------------------------------------------------------------------------------- DICOM


def test_dicom_16bit_rescale_keeps_precision(tmp_path: Path) -> None:
    stored = gradient(64, 96, top=60000)
    path = write_dicom(tmp_path / "a.dcm", make_dicom(stored, RescaleSlope=2, RescaleIntercept=-1024))
    img, info = read_image_with_info(path)
    check_image(img, stored.shape)
    assert len(np.unique(img)) > 256
    np.testing.assert_allclose(img, (stored - stored.min()) / np.ptp(stored), atol=1e-6)
    assert info == ImageInfo(96, 64, "MONOCHROME2", "DICOM")


def test_dicom_rescale_then_window(tmp_path: Path) -> None:
    stored = np.zeros((32, 32), np.int64)
    stored[:, 8:16] = 500  # HU 0: the window centre
    stored[:, 16:24] = 250  # HU -500
    stored[:, 24:] = 4000  # HU 7000: saturates
    ds = make_dicom(stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=2000)
    img = read_image(write_dicom(tmp_path / "w.dcm", ds))
    check_image(img, (32, 32))
    assert img[:, :8].max() == 0.0
    assert img[:, 8:16].mean() == pytest.approx(0.5, abs=0.01)  # 0.125 without window, 0.75 without rescale
    assert img[:, 16:24].mean() == pytest.approx(0.25, abs=0.01)
    assert img[:, 24:].min() == 1.0


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    stored = np.full((32, 32), 100, np.int64)
    stored[8:24, 8:24] = 3000  # bright in stored values = dark on a MONOCHROME1 display
    path = write_dicom(tmp_path / "m1.dcm", make_dicom(stored, photometric="MONOCHROME1", bits_stored=12))
    img, info = read_image_with_info(path)
    check_image(img, (32, 32))
    assert img[8:24, 8:24].max() == pytest.approx(0.0, abs=1e-6)
    assert img[:8].min() == pytest.approx(1.0, abs=1e-6)
    assert info.mode == "MONOCHROME1"


def test_dicom_12bit_keeps_precision(tmp_path: Path) -> None:
    stored = gradient(64, 96, top=4095)
    img = read_image(write_dicom(tmp_path / "b12.dcm", make_dicom(stored, bits_stored=12)))
    check_image(img, stored.shape)
    assert len(np.unique(img)) > 256
    np.testing.assert_allclose(img, stored / 4095.0, atol=1e-6)


def test_dicom_multiframe_reads_first_frame(tmp_path: Path) -> None:
    first = gradient(32, 40, top=1000)
    frames = np.stack([first, np.full_like(first, 7)])
    img = read_image(write_dicom(tmp_path / "mf.dcm", make_dicom(frames, frames=2)))
    np.testing.assert_allclose(img, first / 1000.0, atol=1e-6)


def test_dicom_rgb_is_luminance(tmp_path: Path) -> None:
    rgb = rgb_image()
    ds = make_dicom(np.zeros((48, 64)), photometric="RGB", bits_stored=8)
    ds.SamplesPerPixel, ds.BitsAllocated, ds.HighBit, ds.PlanarConfiguration = 3, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    img = read_image(write_dicom(tmp_path / "rgb.dcm", ds))
    check_image(img, (48, 64))
    np.testing.assert_allclose(img, rgb @ np.array([0.299, 0.587, 0.114]) / 255.0, atol=1e-5)


def test_dicom_without_preamble_is_read_by_suffix(tmp_path: Path) -> None:
    stored = gradient(top=3000)
    data = write_dicom(tmp_path / "full.dcm", make_dicom(stored)).read_bytes()
    assert data[128:132] == b"DICM"
    (tmp_path / "bare.dcm").write_bytes(data[132:])
    np.testing.assert_allclose(read_image(tmp_path / "bare.dcm"), stored / 3000.0, atol=1e-6)
    np.testing.assert_allclose(read_image_bytes(data[132:], name="up.DICOM"), stored / 3000.0, atol=1e-6)
    with pytest.raises(ImageReadError, match="not a recognised image format"):
        read_image_bytes(data[132:], name="up.png")  # without the suffix nothing says DICOM


def test_dicom_without_file_meta_implicit_vr(tmp_path: Path) -> None:
    stored = gradient(top=2000)
    ds = make_dicom(stored)
    del ds.file_meta  # old ACR-NEMA style: no preamble, no group 0002, implicit VR little endian
    ds.save_as(tmp_path / "old.dcm", implicit_vr=True, little_endian=True)
    assert (tmp_path / "old.dcm").read_bytes()[128:132] != b"DICM"
    np.testing.assert_allclose(read_image(tmp_path / "old.dcm"), stored / 2000.0, atol=1e-6)


def test_dicom_with_magic_is_read_whatever_the_name(tmp_path: Path) -> None:
    stored = gradient(top=3000)
    data = write_dicom(tmp_path / "x.dcm", make_dicom(stored)).read_bytes()
    (tmp_path / "noext").write_bytes(data)
    np.testing.assert_allclose(read_image(tmp_path / "noext"), stored / 3000.0, atol=1e-6)
    np.testing.assert_allclose(read_image_bytes(data), stored / 3000.0, atol=1e-6)


def test_dicom_constant_reads_as_zeros(tmp_path: Path) -> None:
    img = read_image(write_dicom(tmp_path / "c.dcm", make_dicom(np.full((16, 16), 900))))
    check_image(img, (16, 16))
    assert not img.any()


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    ds = make_dicom(np.zeros((16, 16)))
    del ds.PixelData
    expect_error(write_dicom(tmp_path / "sr.dcm", ds), "no pixel data")


def test_dicom_compressed_without_decoder(tmp_path: Path) -> None:
    if pydicom.pixels.get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    ds = make_dicom(np.zeros((16, 16)))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(60) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    err = expect_error(write_dicom(tmp_path / "ls.dcm", ds), "needs a decoder")
    assert "JPEG-LS" in err.reason


def test_dicom_without_pydicom_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "a.dcm", make_dicom(gradient()))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # what `import pydicom` sees when it is absent
    expect_error(path, 'pip install "lungxray[dicom]"')


def test_dicom_too_many_pixels_checked_before_decoding(tmp_path: Path) -> None:
    ds = make_dicom(np.zeros((16, 16)))
    ds.Rows = ds.Columns = 8000  # 64 Mpx claimed; only 512 bytes of pixel data present
    expect_error(write_dicom(tmp_path / "big.dcm", ds), "too many pixels")


def test_same_image_as_jpeg_png16_and_dicom_agree(tmp_path: Path) -> None:
    g16 = gradient(96, 128, top=65535)
    yy, xx = np.mgrid[:96, :128]
    g16 = np.where((yy - 48) ** 2 + (xx - 64) ** 2 < 20**2, 65535 - g16, g16)  # a disc for some structure
    Image.fromarray(g16.astype(np.uint16)).save(tmp_path / "s.png")
    Image.fromarray(np.round(g16 / 257).astype(np.uint8)).save(tmp_path / "s.jpg", quality=95)
    write_dicom(tmp_path / "s.dcm", make_dicom(g16))
    png, jpg, dcm = (read_image(tmp_path / f"s.{ext}") for ext in ("png", "jpg", "dcm"))
    assert np.abs(png - dcm).mean() < 1e-6
    assert np.abs(png - jpg).mean() < 0.02
    assert np.abs(dcm - jpg).mean() < 0.02


# --------------------------------------------------------------------------------------- real data


def first_file(folder: Path, pattern: str) -> Path:
    if not folder.is_dir():
        pytest.skip(f"real data not present at {folder}")
    files = sorted(folder.glob(pattern))
    if not files:
        pytest.skip(f"no {pattern} in {folder}")
    return files[0]


def test_real_kermany_jpeg() -> None:
    path = first_file(DATA_ROOT / "chest_xray" / "train" / "NORMAL", "*.jpeg")
    img, info = read_image_with_info(path)
    pil = Image.open(path)
    check_image(img, (pil.height, pil.width))
    ref = np.asarray(pil.convert("L"), dtype=np.float64) / 255.0
    assert abs(img.mean() - ref.mean()) < 1.0 / 255
    assert img.std() > 0.05  # an X-ray, not a blank
    assert info.format == "JPEG"


def test_real_nih_png() -> None:
    path = first_file(DATA_ROOT / "nih_sample" / "images", "*.png")
    img = read_image(path)
    pil = Image.open(path)
    check_image(img, (pil.height, pil.width))
    ref = np.asarray(pil.convert("L"), dtype=np.float64) / 255.0
    assert np.abs(img - ref).max() <= 1.0 / 255 + 1e-6


# ---------------------------------------------------------------------------------------- failures


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.png", "file not found")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "d.png").mkdir()
    expect_error(tmp_path / "d.png", "is a directory")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.png").touch()
    expect_error(tmp_path / "e.png", "empty file")
    with pytest.raises(ImageReadError, match="empty file") as info:
        read_image_bytes(b"", name="upload.png")
    assert info.value.path == "upload.png"


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("patient list, not a picture\n" * 20)
    expect_error(tmp_path / "notes.png", "not a recognised image format")


def test_unsupported_format_is_not_an_image(tmp_path: Path) -> None:
    Image.fromarray(gradient().astype(np.uint8)).save(tmp_path / "a.pcx", format="PCX")
    expect_error(tmp_path / "a.pcx", "not a recognised image format")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"t.{fmt.lower()}"
    Image.fromarray(rgb_image()).resize((256, 192)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "truncated or corrupt")


def test_truncated_dicom(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "t.dcm", make_dicom(gradient(64, 64, top=4000)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    expect_error(path, "corrupt")


def test_bomb_over_max_pixels_is_refused_from_header(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_bytes_with_size(8000, 8000))  # 64 Mpx > 50 Mpx, 100 bytes
    assert DEFAULT_MAX_PIXELS < 8000 * 8000
    expect_error(tmp_path / "bomb.png", "too many pixels")


def test_bomb_beyond_pil_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_bytes_with_size(30000, 30000))  # PIL itself raises here
    expect_error(tmp_path / "bomb.png", "too many pixels")


def test_max_pixels_parameter(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "a.png")
    expect_error(tmp_path / "a.png", "too many pixels", max_pixels=5_000)
    assert read_image(tmp_path / "a.png", max_pixels=10_000).shape == (100, 100)


@pytest.mark.parametrize("size", [(1, 1), (7, 20), (20, 7)])
def test_too_small(tmp_path: Path, size: tuple[int, int]) -> None:
    Image.new("L", size, 100).save(tmp_path / "s.png")
    expect_error(tmp_path / "s.png", "too small")


def test_extreme_aspect_ratio(tmp_path: Path) -> None:
    Image.new("L", (81, 8), 100).save(tmp_path / "wide.png")
    expect_error(tmp_path / "wide.png", "aspect ratio")
    Image.new("L", (80, 8), 100).save(tmp_path / "ok.png")  # exactly 10:1 is accepted
    assert read_image(tmp_path / "ok.png").shape == (8, 80)


def test_nan_is_never_returned(tmp_path: Path) -> None:
    arr = np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)
    arr[3, 4] = np.nan
    Image.fromarray(arr, "F").save(tmp_path / "f.tiff")
    expect_error(tmp_path / "f.tiff", "NaN")


def test_float_tiff_is_scaled(tmp_path: Path) -> None:
    arr = np.linspace(-100, 300, 400, dtype=np.float32).reshape(20, 20)
    Image.fromarray(arr, "F").save(tmp_path / "f.tiff")
    img = read_image(tmp_path / "f.tiff")
    check_image(img, (20, 20))
    np.testing.assert_allclose(img, (arr + 100) / 400, atol=1e-6)


def test_error_is_a_lungxray_error(tmp_path: Path) -> None:
    with pytest.raises(LungXrayError):
        read_image(tmp_path / "missing.dcm")


# ------------------------------------------------------------------------------------------ helpers


def test_is_image_path_and_suffixes() -> None:
    expected = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm", ".dicom"}
    assert expected == SUPPORTED_SUFFIXES
    assert is_image_path("a/B.PNG") and is_image_path(Path("x.dcm")) and is_image_path("y.JPEG")
    assert not is_image_path("labels.csv") and not is_image_path("README") and not is_image_path("a.png.txt")
