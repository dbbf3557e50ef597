"""Issue 12 items 5-7: memory-bounded decoding, size-checked compressed DICOM, 12-bit data in 16 bits."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import lungxray
from lungxray.data import dicom as dicom_checks
from lungxray.data.imageio import (
    DEFAULT_MAX_PIXELS,
    SERVER_MAX_PIXELS,
    apply_pil_pixel_limit,
    read_image,
    read_image_bytes,
)
from lungxray.errors import ImageReadError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

_SRC = str(Path(lungxray.__file__).resolve().parents[1])  # the lungxray under test, for subprocesses


def expect_error(path: Path, reason: str, **kwargs: object) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    assert info.value.path == str(path)
    assert reason in info.value.reason, info.value.reason
    assert str(path) in str(info.value)
    return info.value


def make_dicom(stored: np.ndarray, *, bits: int = 16, bits_stored: int | None = None, **elements) -> Dataset:
    """A minimal secondary-capture DICOM dataset holding ``stored`` (uint8 or uint16, one sample)."""
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
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2" if bits == 16 else "u1").tobytes()
    return ds


def encapsulated(ds: Dataset, syntax: str, frames: list[bytes]) -> Dataset:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    return ds


def write_dicom(path: Path, ds: Dataset) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient8(h: int = 64, w: int = 64) -> np.ndarray:
    return ((np.arange(w)[None, :] * 255 // (w - 1)) + np.zeros((h, 1), dtype=int)).astype(np.uint8)


def rle_segment(data: bytes) -> bytes:
    """PackBits-encode ``data`` as literal runs of up to 128 bytes (valid DICOM RLE)."""
    out = bytearray()
    for i in range(0, len(data), 128):
        run = data[i : i + 128]
        out += bytes([len(run) - 1]) + run
    return bytes(out)


def rle_frame(segments: list[bytes], nr_segments: int | None = None) -> bytes:
    """An RLE frame: the 64-byte header (segment count, offsets), then the segments (even-padded)."""
    offsets, body, pos = [], b"", 64
    for seg in segments:
        seg = seg + b"\x00" * (len(seg) % 2)
        offsets.append(pos)
        body += seg
        pos += len(seg)
    header = struct.pack(
        "<16I",
        nr_segments if nr_segments is not None else len(segments),
        *offsets,
        *([0] * (15 - len(offsets))),
    )
    return header + body


# ------------------------------------------------------------------------------------- item 5: memory

_MEASURE = textwrap.dedent(
    """
    import resource, sys
    from lungxray.data.imageio import read_image
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    img = read_image(sys.argv[1])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert img.shape == (int(sys.argv[2]), int(sys.argv[3])) and str(img.dtype) == "float32", img.shape
    print((after - before) // 1024, float(img.min()), float(img.max()))
    """
)

_MAKE_50MPX = textwrap.dedent(
    """
    import sys
    import numpy as np
    from PIL import Image
    h, w, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    row = (np.arange(w) % 4096 * 16).astype(np.uint16)  # 16-bit values up to 65520
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (h, w)))).save(out + "/g16.png", compress_level=1)
    r = (np.arange(w) % 256).astype(np.uint8)
    rgb = np.broadcast_to(np.stack([r, 255 - r, r // 2], -1), (h, w, 3))
    Image.fromarray(np.ascontiguousarray(rgb)).save(out + "/rgb.png", compress_level=1)
    """
)


def _python(code: str, *args: object) -> str:
    env = {**os.environ, "PYTHONPATH": _SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_50mpx_png_16bit_and_rgb_decode_within_600mb(tmp_path: Path) -> None:
    h, w = 7142, 7000  # 49,994,000 px: just under DEFAULT_MAX_PIXELS
    assert h * w <= DEFAULT_MAX_PIXELS
    _python(_MAKE_50MPX, h, w, tmp_path)  # files of a few hundred KB; written in another process
    assert (tmp_path / "g16.png").stat().st_size < 2_000_000
    growth = {}
    for name in ("g16.png", "rgb.png"):
        mb, lo, hi = _python(_MEASURE, tmp_path / name, h, w).split()
        growth[name] = int(mb)
        assert 0.0 <= float(lo) < float(hi) <= 1.0
    # float64 copies used to take 966 MB (16-bit) and 1730 MB (RGB); now PIL's pixels + float32 result
    assert growth["g16.png"] < 600, growth
    assert growth["rgb.png"] < 600, growth


def test_server_cap_and_pil_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    assert SERVER_MAX_PIXELS == 25_000_000 < DEFAULT_MAX_PIXELS
    path = tmp_path / "a.png"
    Image.fromarray(gradient8()).save(path)
    read_image(path, max_pixels=SERVER_MAX_PIXELS)
    assert Image.MAX_IMAGE_PIXELS == SERVER_MAX_PIXELS  # Pillow's process-wide limit follows the cap
    read_image(path)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS
    apply_pil_pixel_limit(1234)
    assert Image.MAX_IMAGE_PIXELS == 1234
    with pytest.raises(ValueError):
        apply_pil_pixel_limit(0)


def test_importing_imageio_leaves_pil_limit_alone() -> None:
    out = _python(
        "from PIL import Image; before = Image.MAX_IMAGE_PIXELS\n"
        "import lungxray.data.imageio\nprint(Image.MAX_IMAGE_PIXELS == before)"
    )
    assert out.strip() == "True"


def test_strip_conversion_matches_whole_image_float64(tmp_path: Path) -> None:
    """8-bit results stay bit-identical to the former whole-image float64 path, across strip borders."""
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (1100, 1003, 4), dtype=np.uint8)  # > 1 Mpx: several strips
    for mode, arr in (("RGB", rgba[..., :3]), ("RGBA", rgba), ("L", rgba[..., 0])):
        path = tmp_path / f"{mode}.png"
        Image.fromarray(np.ascontiguousarray(arr), mode=mode).save(path, compress_level=1)
        f64 = np.asarray(Image.open(path), dtype=np.float64)
        ref = (f64[..., :3] @ np.array([0.299, 0.587, 0.114]) if f64.ndim == 3 else f64) / 255.0
        np.testing.assert_array_equal(read_image(path), np.clip(ref, 0, 1).astype(np.float32))


# ---------------------------------------------------------------------------- item 7: 12-bit in 16 bits


def ramp12(h: int = 64, w: int = 96) -> np.ndarray:
    """12-bit values spanning exactly 0..4095."""
    return np.round(np.linspace(0, 4095, h * w)).astype(np.uint16).reshape(h, w)


def test_12bit_png_reads_like_12bit_dicom(tmp_path: Path) -> None:
    g = ramp12()
    Image.fromarray(g).save(tmp_path / "a.png")
    png = read_image(tmp_path / "a.png")
    dcm = read_image(write_dicom(tmp_path / "a.dcm", make_dicom(g, bits_stored=12)))
    assert png.max() == 1.0  # was 4095 / 65535 = 0.0625: nearly black
    np.testing.assert_allclose(png, dcm, atol=1e-6)
    np.testing.assert_allclose(png, g / 4095.0, atol=1e-7)


def test_12bit_tiff_and_dark_12bit_png(tmp_path: Path) -> None:
    g = ramp12()
    Image.fromarray(g).save(tmp_path / "a.tiff")
    np.testing.assert_allclose(read_image(tmp_path / "a.tiff"), g / 4095.0, atol=1e-7)
    dark = g // 4  # a dark 12-bit image stays dark: scaled by 4095, not stretched by its own max
    Image.fromarray(dark).save(tmp_path / "dark.png")
    np.testing.assert_allclose(read_image(tmp_path / "dark.png"), dark / 4095.0, atol=1e-7)


def test_16bit_png_above_4095_is_still_divided_by_65535(tmp_path: Path) -> None:
    g = (ramp12() * 16).astype(np.uint16)  # max 65520
    Image.fromarray(g).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), (g / 65535.0).astype(np.float32))


def test_png_sbit_and_tiff_max_sample_value_declare_the_depth(tmp_path: Path) -> None:
    g = np.round(np.linspace(0, 1023, 64 * 96)).astype(np.uint16).reshape(64, 96)  # 10-bit data
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([10]))
    Image.fromarray(g).save(tmp_path / "a.png", pnginfo=info)
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), g / 1023.0, atol=1e-7)
    Image.fromarray(g).save(tmp_path / "a.tiff", tiffinfo={281: 1023})
    np.testing.assert_allclose(read_image(tmp_path / "a.tiff"), g / 1023.0, atol=1e-7)
    # sBIT = 16 wins over the max <= 4095 rule
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([16]))
    Image.fromarray(ramp12()).save(tmp_path / "b.png", pnginfo=info)
    np.testing.assert_allclose(read_image(tmp_path / "b.png"), ramp12() / 65535.0, atol=1e-7)


# ------------------------------------------------------------------------- item 6: compressed DICOM


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_jpeg_dicom_that_matches_its_header_decodes(tmp_path: Path) -> None:
    g = gradient8()
    ds = encapsulated(make_dicom(g, bits=8), JPEGBaseline8Bit, [jpeg_bytes(g)])
    img = read_image(write_dicom(tmp_path / "ok.dcm", ds))
    assert img.shape == (64, 64)
    assert abs(float(img[:, -1].mean()) - 1.0) < 0.05 and float(img[:, 0].mean()) < 0.05


def test_jpeg_dicom_whose_sof_disagrees_with_rows_columns_is_refused(tmp_path: Path) -> None:
    ds = encapsulated(make_dicom(gradient8(), bits=8), JPEGBaseline8Bit, [jpeg_bytes(gradient8())])
    ds.Rows = ds.Columns = 4096
    err = expect_error(write_dicom(tmp_path / "sof.dcm", ds), "JPEG SOF says 64x64")
    assert "4096x4096" in err.reason and "refusing to decode" in err.reason


def test_jpeg_dicom_whose_sof_promises_a_huge_frame_is_refused(tmp_path: Path) -> None:
    jpg = bytearray(jpeg_bytes(gradient8()))
    sof = jpg.find(b"\xff\xc0")
    jpg[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)  # SOF: 30000x30000, header: 64x64
    ds = encapsulated(make_dicom(gradient8(), bits=8), JPEGBaseline8Bit, [bytes(jpg)])
    expect_error(write_dicom(tmp_path / "bomb.dcm", ds), "JPEG SOF says 30000x30000")


def test_j2k_dicom_whose_siz_disagrees_is_refused(tmp_path: Path) -> None:
    from PIL import features

    if not features.check("jpg_2000"):
        pytest.skip("Pillow without OpenJPEG")
    buf = io.BytesIO()
    Image.fromarray(gradient8()).save(buf, format="JPEG2000", irreversible=False, no_jp2=True)
    assert dicom_checks.j2k_frame_size(buf.getvalue()) == (64, 64, 1, 8)
    jp2 = io.BytesIO()
    Image.fromarray(gradient8()).save(jp2, format="JPEG2000", irreversible=False)  # JP2 boxes around it
    assert dicom_checks.j2k_frame_size(jp2.getvalue()) == (64, 64, 1, 8)
    ds = encapsulated(make_dicom(gradient8(), bits=8), JPEG2000Lossless, [buf.getvalue()])
    np.testing.assert_allclose(
        read_image(write_dicom(tmp_path / "ok.dcm", ds)), gradient8() / 255.0, atol=1e-6
    )
    ds.Rows = ds.Columns = 512
    expect_error(write_dicom(tmp_path / "j2k.dcm", ds), "JPEG 2000 SIZ says 64x64")


def test_rle_dicom_that_matches_its_header_decodes(tmp_path: Path) -> None:
    g = gradient8().astype(np.uint16) * 16  # 16-bit: two segments, MSB then LSB
    msb, lsb = (g >> 8).astype(np.uint8).tobytes(), (g & 0xFF).astype(np.uint8).tobytes()
    ds = encapsulated(make_dicom(g), RLELossless, [rle_frame([rle_segment(msb), rle_segment(lsb)])])
    native = read_image(write_dicom(tmp_path / "n.dcm", make_dicom(g)))
    np.testing.assert_array_equal(read_image(write_dicom(tmp_path / "rle.dcm", ds)), native)


def test_rle_dicom_with_wrong_segment_count_is_refused(tmp_path: Path) -> None:
    g = gradient8()
    frame = rle_frame([rle_segment(g.tobytes())])  # one segment, but 16 bits allocated need two
    ds = encapsulated(make_dicom(g), RLELossless, [frame])
    expect_error(write_dicom(tmp_path / "seg.dcm", ds), "RLE header has 1 segment(s)")


def test_rle_dicom_whose_segment_decodes_to_fewer_bytes_is_refused(tmp_path: Path) -> None:
    g = gradient8()
    ds = encapsulated(make_dicom(g, bits=8), RLELossless, [rle_frame([rle_segment(g.tobytes()[:1000])])])
    expect_error(write_dicom(tmp_path / "short.dcm", ds), "decodes to 1,000 bytes, fewer than")


def test_rle_dicom_whose_segment_decodes_to_more_bytes_is_refused(tmp_path: Path) -> None:
    # 2 bytes per 128 decoded: a 40 KB segment that would inflate to 2.5 MB for a 64x64 image
    bomb = b"\x81\x7f" * 20_000
    ds = encapsulated(make_dicom(gradient8(), bits=8), RLELossless, [rle_frame([bomb])])
    expect_error(write_dicom(tmp_path / "long.dcm", ds), "decodes to more than Rows x Columns")


def test_multiframe_compressed_dicom_reads_and_checks_the_first_frame(tmp_path: Path) -> None:
    g = gradient8()
    first, second = rle_frame([rle_segment(g.tobytes())]), rle_frame([rle_segment((255 - g).tobytes())])
    ds = encapsulated(make_dicom(g, bits=8, NumberOfFrames=2), RLELossless, [first, second])
    img = read_image(write_dicom(tmp_path / "mf.dcm", ds))
    np.testing.assert_allclose(img, g / 255.0, atol=1e-6)  # first frame, min-max (0..255)
    ds.PixelData = encapsulate([rle_frame([rle_segment(g.tobytes()[:10])]), second])
    expect_error(write_dicom(tmp_path / "mf_bad.dcm", ds), "fewer than Rows x Columns")


def test_deflated_dicom_is_inflated_with_a_limit(tmp_path: Path) -> None:
    g = gradient8()
    ds = make_dicom(g, bits=8)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    np.testing.assert_allclose(read_image(write_dicom(tmp_path / "ok.dcm", ds)), g / 255.0, atol=1e-6)
    ds.add_new(0x00091010, "OB", bytes(40 * 2**20))  # 40 MB of zeros deflate to ~40 KB
    ds.add_new(0x00090010, "LO", "BOMB")
    path = write_dicom(tmp_path / "bomb.dcm", ds)
    assert path.stat().st_size < 1_000_000
    expect_error(path, "inflates to more than", max_pixels=1_000_000)
    assert read_image(path).shape == (64, 64)  # within the default cap's limit it still reads


def test_unsupported_samples_per_pixel_is_refused(tmp_path: Path) -> None:
    ds = make_dicom(gradient8(), bits=8, SamplesPerPixel=2)
    expect_error(write_dicom(tmp_path / "spp.dcm", ds), "SamplesPerPixel=2")


def test_frame_parsers_on_bytes() -> None:
    g = gradient8()
    assert dicom_checks.jpeg_frame_size(jpeg_bytes(g)) == (64, 64, 1, 8)
    assert dicom_checks.rle_segment_length(b"\x81\x00", 10**6) == 128
    assert dicom_checks.rle_segment_length(b"\x02abc", 10**6) == 3
    assert dicom_checks.rle_segment_length(b"\x05ab", 10**6) == 2  # truncated literal: what is there
    assert dicom_checks.rle_segment_length(b"\x81\x00" * 100, 300) < 600  # counting stops past the limit
    with pytest.raises(ValueError):
        dicom_checks.jpeg_frame_size(b"not a jpeg")
    with pytest.raises(ValueError):
        dicom_checks.j2k_frame_size(b"\x00" * 64)


def test_read_image_bytes_runs_the_same_checks(tmp_path: Path) -> None:
    ds = encapsulated(make_dicom(gradient8(), bits=8), JPEGBaseline8Bit, [jpeg_bytes(gradient8())])
    ds.Rows = ds.Columns = 4096
    data = write_dicom(tmp_path / "sof.dcm", ds).read_bytes()
    with pytest.raises(ImageReadError, match="JPEG SOF says 64x64"):
        read_image_bytes(data, name="upload.dcm")


def test_big_endian_16bit_tiff(tmp_path: Path) -> None:
    g = ramp12()
    Image.frombytes("I;16B", (g.shape[1], g.shape[0]), g.astype(">u2").tobytes()).save(tmp_path / "be.tiff")
    assert Image.open(tmp_path / "be.tiff").mode == "I;16B"  # PIL's getextrema refuses this mode
    np.testing.assert_allclose(read_image(tmp_path / "be.tiff"), g / 4095.0, atol=1e-7)


def test_float_dicom_with_nan_is_refused_not_read_as_zeros(tmp_path: Path) -> None:
    vals = np.linspace(-1.0, 3.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    ds = make_dicom(gradient8(), bits=8)
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.FloatPixelData = vals.tobytes()
    np.testing.assert_allclose(read_image(write_dicom(tmp_path / "f.dcm", ds)), (vals + 1) / 4, atol=1e-6)
    vals[3, 5] = np.nan
    ds.FloatPixelData = vals.tobytes()
    expect_error(write_dicom(tmp_path / "nan.dcm", ds), "NaN or infinity")
