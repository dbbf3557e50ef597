"""Shared fixtures and helpers: where the real data lives, real X-ray files, random-weight runs, and one
tiny trained run reused by the whole session."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (CI has it there); LUNGXRAY_TEST_DATA points elsewhere, e.g. at a
# pack made by benchmarks/pack_for_device.py on a machine that cannot read ../shared.
DATA_ROOT = Path(os.environ.get("LUNGXRAY_TEST_DATA") or REPO / ".." / "shared" / "data").resolve()
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


def xray_files(n: int, kind: str = "PNEUMONIA") -> list[Path]:
    """The first ``n`` real test-split X-rays of a class (skips if the data is absent)."""
    return sorted((require_data() / "test" / kind).glob("*.jpeg"))[:n]


def make_random_run(
    out: Path,
    *,
    arch: str = "cnn-small",
    size: int = 64,
    task: str = "binary",
    classes: tuple[str, ...] = ("NORMAL", "PNEUMONIA"),
    seed: int = 0,
) -> Path:
    """A run directory with randomly initialised weights (model.json + model.safetensors); its OOD
    statistics are a diagonal Gaussian of the features of noise images (cheap, unlike Ledoit-Wolf)."""
    import torch

    from lungxray.inference import DEFAULT_NORMALIZATION
    from lungxray.models.factory import create_model
    from lungxray.models.parts import embed
    from lungxray.ood import fit_threshold, mahalanobis
    from lungxray.runcard import Calibration, OODSpec, Preprocessing, RunCard
    from lungxray.rundir import save_weights

    torch.manual_seed(seed)  # create_model draws from torch's default generator
    model = create_model(
        arch, in_chans=1, num_classes=1 if task == "binary" else len(classes), img_size=size
    ).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        feats = embed(model, torch.rand((24, 1, size, size), generator=gen)).flatten(1).numpy()
    mean = feats.mean(0)
    precision = np.diag(1.0 / (feats.var(0) + 1e-6)).astype(np.float32)
    card = RunCard(
        name=out.name,
        architecture=arch,
        task=task,
        classes=tuple(classes),
        preprocessing=Preprocessing(input_size=size, **{k: float(v) for k, v in DEFAULT_NORMALIZATION.items()}),
        ood=OODSpec(threshold=fit_threshold(mahalanobis(feats, mean, precision)), dim=int(mean.shape[0])),
        calibrations=(
            Calibration(
                strategy="0.5",
                threshold=0.5 if task == "binary" else None,
                thresholds=(0.5,) * len(classes) if task == "multilabel" else None,
            ),
        ),
    )
    card.write(out)
    save_weights(out / "model.safetensors", model.state_dict(), {"mean": mean, "precision": precision})
    return out


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


def noise_pngs(folder: Path, n: int, *, broken: int | None = None, seed: int = 0,
               height: int = 24, vary: int = 9, width: int = 28) -> list[Path]:
    """``n`` small random gray PNGs ``folder/img_0000.png ...`` (heights ``height + i % vary``); file
    ``broken`` (an index) gets bytes that are not a PNG. Distinct content, so no cache dedupes them."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / f"img_{i:04d}.png"
        if i == broken:
            p.write_bytes(b"\x89PNG not really")
        else:
            Image.fromarray(rng.integers(0, 256, (height + i % vary, width), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def random_lung_run(path: Path, size: int = 32) -> Path:
    """A lung-field run (``lungxray train-lungs`` layout) with random U-Net weights at ``size`` px: enough
    for code paths that need masks, not for masks that mean anything. Needs segmentation_models_pytorch."""
    from lungxray.segmentation.model import (
        DEFAULT_DECODER,
        DEFAULT_ENCODER,
        build_unet,
        lung_card,
        save_lung_model,
    )

    return save_lung_model(path, lung_card("lungs", size, DEFAULT_ENCODER, DEFAULT_DECODER), build_unet())


def inject_prediction_warning(monkeypatch, text: str) -> None:
    """Make every served prediction carry the warning ``text`` (as a DICOM header check would)."""
    import lungxray.serve.service as service

    real = service._analyze

    def with_warning(*args, **kwargs):
        out = real(*args, **kwargs)
        out["prediction"].warnings = [text]
        return out

    monkeypatch.setattr(service, "_analyze", with_warning)


def gate_sets(root: Path, n_in: int = 60, n_out: int = 60) -> tuple[Path, Path]:
    """An inside data folder (train/ and test/ class folders of real Kermany films, symlinked) and an
    outside folder of real NIH adult films, for a population gate (``lungxray.gate``)."""
    nih = DATA_ROOT / "nih_sample" / "images"
    require_data()
    require_data(nih)
    inside, outside = root / "inside", root / "outside"
    for split, per_class in (("train", n_in // 2), ("test", 5)):
        for cls in ("NORMAL", "PNEUMONIA"):
            (inside / split / cls).mkdir(parents=True)
            for f in sorted((CHEST_XRAY / split / cls).glob("*.jpeg"))[:per_class]:
                (inside / split / cls / f.name).symlink_to(f)
    outside.mkdir()
    for f in sorted(nih.glob("*.png"))[:n_out]:
        (outside / f.name).symlink_to(f)
    return inside, outside


def tiny_gate(root: Path, cache_dir: Path) -> Path:
    """A population gate trained 3 epochs at 32 px on 60 Kermany vs 60 NIH films (a few seconds): real
    plumbing, not a gate to rely on."""
    from lungxray.training.gate import train_gate

    inside, outside = gate_sets(root)
    over = {"data.size": 32, "train.epochs": 3, "train.batch_size": 16, "model.kwargs": {"width": 4},
            "data.cache_dir": str(cache_dir), "eval.bootstrap": 20, "train.threads": 1}  # fmt: skip
    return train_gate(inside, [outside], root / "run", overrides=over, progress=False)
