"""Fuzz the image reader: mutated PNG/JPEG/DICOM bytes may fail, but only with ImageReadError."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import pytest
from PIL import Image

from lungxray.data.imageio import read_image_bytes
from lungxray.errors import ImageReadError

hypothesis = pytest.importorskip("hypothesis")
pydicom = pytest.importorskip("pydicom")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _picture(h: int = 48, w: int = 64) -> np.ndarray:
    """A gradient with noise, so compressed data (where most mutations land) dominates the file."""
    yy, xx = np.mgrid[:h, :w]
    noise = np.random.default_rng(0).integers(0, 40, size=(h, w))
    return ((xx * 3 + yy * 2 + noise) % 256).astype(np.uint8)


@cache
def seed_file(kind: str) -> bytes:
    """A small valid file of ``kind`` (png, png16, jpeg, dicom) to mutate."""
    buf = io.BytesIO()
    if kind == "png":
        Image.fromarray(_picture()).save(buf, format="PNG")
    elif kind == "png16":
        Image.fromarray(_picture().astype(np.uint16) * 257).save(buf, format="PNG")
    elif kind == "jpeg":
        Image.fromarray(np.dstack([_picture()] * 3)).save(buf, format="JPEG", quality=80)
    elif kind == "dicom":
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Rows, ds.Columns = 48, 64
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 2, -100
        ds.WindowCenter, ds.WindowWidth = 200, 400
        ds.PixelData = (_picture().astype("<u2") * 16).tobytes()
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@st.composite
def mutations(draw: st.DrawFn, kind: str) -> bytes:
    """Seed bytes with 1-4 edits: flip bits, overwrite a run, insert bytes, delete a run, or truncate."""
    data = bytearray(seed_file(kind))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 32))]
        else:
            del data[at:]
    return bytes(data)


FUZZ = settings(
    max_examples=150,
    deadline=3000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    derandomize=True,  # same examples every run: a failure here is reproducible, not flaky
)


def check_only_image_read_error(data: bytes, name: str) -> None:
    try:
        img = read_image_bytes(data, name=name)
    except ImageReadError as e:
        assert e.path == name and e.reason
        return
    assert img.dtype == np.float32 and img.ndim == 2
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0


@pytest.mark.parametrize("kind", ["png", "png16", "jpeg", "dicom"])
def test_seed_files_read(kind: str) -> None:
    img = read_image_bytes(seed_file(kind), name=f"seed.{'dcm' if kind == 'dicom' else kind}")
    assert img.shape == (48, 64) and img.std() > 0.1


@pytest.mark.filterwarnings("ignore")  # PIL/pydicom warn about the damage; only exceptions matter here
@pytest.mark.parametrize(("kind", "name"), [("png", "f.png"), ("png16", "f.png"), ("jpeg", "f.jpg")])
@FUZZ
@given(data=st.data())
def test_mutated_pil_files_raise_only_image_read_error(kind: str, name: str, data: st.DataObject) -> None:
    check_only_image_read_error(data.draw(mutations(kind)), name)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["f.dcm", "upload"])  # found by suffix and/or the DICM magic
@FUZZ
@given(data=st.data())
def test_mutated_dicom_raises_only_image_read_error(name: str, data: st.DataObject) -> None:
    check_only_image_read_error(data.draw(mutations("dicom")), name)
