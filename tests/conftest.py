"""Shared fixtures: where the real data lives, and one tiny trained run reused by the whole session."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = (REPO / ".." / "shared" / "data").resolve()
CHEST_XRAY = DATA_ROOT / "chest_xray"


def require_data(path: Path = CHEST_XRAY) -> Path:
    """Skip the calling test when the shared data set is absent (it is present in CI)."""
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


def dicom_bytes(stored: np.ndarray, photometric: str = "MONOCHROME2") -> bytes:
    """uint16 ``stored`` (H, W) as a minimal secondary-capture DICOM file, in memory."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def one_thread():
    """One torch thread for the test: 2 threads spin-wait on a shared CPU (up to 50x slower there)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root() -> Path:
    return require_data(DATA_ROOT)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One image cache for the session (never the user's ~/.cache)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_dir) -> Path:
    """A binary cnn-small run at 64 px, trained 2 epochs on ~300 chest_xray images (about 15 s)."""
    import torch

    from lungxray.config import load_config
    from lungxray.training import train

    require_data()
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = load_config(
        None,
        {
            "name": "tiny",
            "out": str(out),
            "data.path": str(CHEST_XRAY),
            "data.max_images": 300,
            "data.size": 64,
            "data.cache_dir": str(cache_dir),
            "train.epochs": 2,
            "train.batch_size": 32,
            "eval.bootstrap": 200,
        },
    )
    train(cfg, progress=False)
    return out
