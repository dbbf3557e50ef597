"""Patient-id rules and patient-grouped, stratified split assignment."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA_ROOT  # noqa: E402
from lungxray.data.manifest import PATIENT_RULES, Manifest, patient_id_from_name
from lungxray.data.readers import from_csv, from_folders
from lungxray.data.splits import assign_splits, patients_across_splits
from lungxray.errors import ConfigError, DataError

CHEST = DATA_ROOT / "chest_xray"
NIH = DATA_ROOT / "nih_sample"


@pytest.mark.parametrize(
    ("filename", "patient"),
    [
        ("person123_bacteria_45.jpeg", "person123"),
        ("person1_virus_6.jpeg", "person1"),
        ("PERSON7_bacteria_1.JPEG", "PERSON7"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0115-0001.jpeg", "NORMAL2-IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("00000013_005.png", "00000013"),
        ("/some/dir/00030805_000.png", "00030805"),
        ("train/PNEUMONIA/person9_bacteria_38.jpeg", "person9"),
        ("scan_42.dcm", "scan_42"),
        ("0100.jpeg", "0100"),
        ("1234_005.png", "1234_005"),  # not 8 digits: not an NIH name
        ("person_x.png", "person_x"),
    ],
)
def test_patient_id_rules(filename, patient):
    assert patient_id_from_name(filename) == patient


def test_patient_rules_are_named():
    assert set(PATIENT_RULES) == {"kermany-person", "kermany-im", "nih"}


def synthetic(
    n_patients: int, images_per_patient: int = 2, *, positive_every: int = 4, splits=None
) -> Manifest:
    """A binary manifest of fake paths: patient k has ``images_per_patient`` images, positive when k % positive_every."""
    patients = [f"p{k}" for k in range(n_patients) for _ in range(images_per_patient)]
    y = np.array([int(k % positive_every != 0) for k in range(n_patients) for _ in range(images_per_patient)])
    labels = np.stack([1 - y, y], axis=1).astype(np.float32)
    n = len(patients)
    return Manifest(
        paths=tuple(f"/fake/{i}.png" for i in range(n)),
        labels=labels,
        classes=("normal", "abnormal"),
        task="binary",
        patients=tuple(patients),
        splits=tuple(splits) if splits is not None else ("",) * n,
    )


def patient_sets(m: Manifest) -> dict[str, set[str]]:
    return {
        s: {p for p, t in zip(m.patients, m.splits, strict=True) if t == s} for s in ("train", "val", "test")
    }


@pytest.fixture(scope="module")
def chest() -> Manifest:
    if not CHEST.is_dir():
        pytest.skip("chest_xray data set not present")
    return from_folders(CHEST)


def test_chest_xray_val_split(chest: Manifest):
    a = assign_splits(chest, val_fraction=0.15, seed=0)
    # official test kept as is; nothing unassigned
    assert [p for p, s in zip(a.paths, a.splits, strict=True) if s == "test"] == [
        p for p, s in zip(chest.paths, chest.splits, strict=True) if s == "test"
    ]
    assert set(a.splits) == {"train", "val", "test"}
    # val takes whole patients from train only: no patient added to a second split
    assert patients_across_splits(a) == patients_across_splits(chest)
    sets = patient_sets(a)
    assert not sets["val"] & (sets["train"] | sets["test"])
    assert abs(a.splits.count("val") / len(a) - 0.15) <= 0.03
    # stratified: the normal share of val is close to train's
    share = {s: a.class_counts(s)["NORMAL"] / a.splits.count(s) for s in ("train", "val")}
    assert abs(share["val"] - share["train"]) < 0.03
    # deterministic for a seed, different for another
    assert assign_splits(chest, val_fraction=0.15, seed=0).splits == a.splits
    b = assign_splits(chest, val_fraction=0.15, seed=1)
    assert b.splits != a.splits and patients_across_splits(b) == patients_across_splits(chest)


def test_chest_xray_reports_source_patients_across_splits(chest: Manifest):
    across = patients_across_splits(chest)
    assert across["person1"] == ["test", "train"]
    assert all(v == ["test", "train"] for v in across.values())
    assert len(across) == 170


@pytest.mark.skipif(not NIH.is_dir(), reason="nih_sample data set not present")
def test_nih_without_test_split_gets_all_three():
    m = from_csv(NIH / "labels.csv")
    a = assign_splits(m, val_fraction=0.15, test_fraction=0.15, seed=3)
    assert set(a.splits) == {"train", "val", "test"}
    assert patients_across_splits(a) == {}
    sets = patient_sets(a)
    assert sum(len(s) for s in sets.values()) == len(set(m.patients)) == 264
    for name in ("val", "test"):  # NIH patients have many images each: a looser tolerance
        assert abs(a.splits.count(name) / len(a) - 0.15) <= 0.05
    # every stratum with enough patients reaches val: the "no finding" rows and a common finding
    val = a.split("val")
    assert (val.labels.sum(axis=1) == 0).any() and val.class_counts()["Effusion"] > 0


def test_existing_val_kept_and_unassigned_rows_filled():
    splits = ["val"] * 40 + [""] * 360
    m = synthetic(200, splits=splits)
    a = assign_splits(m, val_fraction=0.15, test_fraction=0.2, seed=0)
    assert a.splits[:40] == ("val",) * 40  # existing val untouched, and no new val rows
    assert a.splits.count("val") == 40
    assert "" not in a.splits
    assert abs(a.splits.count("test") / len(a) - 0.2) <= 0.03
    assert patients_across_splits(a) == {}


def test_patient_in_two_source_splits_is_not_moved():
    # p0 has one image in train and one in test; p1..p99 are train only
    splits = ["train", "test"] + ["train"] * 198
    m = synthetic(100, splits=splits)
    for seed in range(5):
        a = assign_splits(m, val_fraction=0.3, seed=seed)
        assert a.splits[:2] == ("train", "test")
        assert patients_across_splits(a) == {"p0": ["test", "train"]}


def test_zero_fractions_skip_splits():
    a = assign_splits(synthetic(50), val_fraction=0.2, test_fraction=0.0, seed=0)
    assert set(a.splits) == {"train", "val"}
    b = assign_splits(synthetic(50), val_fraction=0.0, test_fraction=0.0)
    assert set(b.splits) == {"train"}


def test_multilabel_split_is_patient_disjoint_and_keeps_nan():
    rng = np.random.default_rng(0)
    n_patients, per = 120, 3
    labels = (rng.random((n_patients * per, 4)) < [0.4, 0.2, 0.1, 0.05]).astype(np.float32)
    labels[::7, 2] = np.nan
    m = Manifest(
        paths=tuple(f"/fake/{i}.png" for i in range(len(labels))),
        labels=labels,
        classes=("a", "b", "c", "d"),
        task="multilabel",
        patients=tuple(f"p{k}" for k in range(n_patients) for _ in range(per)),
        splits=("",) * len(labels),
    )
    a = assign_splits(m, seed=0)
    assert set(a.splits) == {"train", "val", "test"} and patients_across_splits(a) == {}
    np.testing.assert_array_equal(np.isnan(a.labels), np.isnan(labels))


def test_split_errors():
    with pytest.raises(ConfigError, match="val_fraction"):
        assign_splits(synthetic(20), val_fraction=1.2)
    with pytest.raises(ConfigError, match="< 1"):
        assign_splits(synthetic(20), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="patients"):  # one patient cannot be split
        assign_splits(synthetic(1, images_per_patient=10))
    with pytest.raises(DataError, match="single class"):  # every patient normal
        assign_splits(synthetic(30, positive_every=1))
    # a patient group too large to move: nothing moves and the val split would be empty
    big = synthetic(2, images_per_patient=50, splits=["train"] * 50 + ["test"] * 50)
    with pytest.raises(DataError, match="patients|empty"):
        assign_splits(big, val_fraction=0.1)


@pytest.mark.parametrize("seed", range(6))
def test_rare_class_share_is_exact_when_patients_allow(seed):
    # 400 one-image patients, 20 of them normal: a 20 % val holds exactly 4 normal and 76 abnormal
    m = synthetic(400, images_per_patient=1, positive_every=20, splits=["train"] * 400)
    assert m.class_counts() == {"normal": 20, "abnormal": 380}
    a = assign_splits(m, val_fraction=0.2, test_fraction=0.0, seed=seed)
    assert a.class_counts("val") == {"normal": 4, "abnormal": 76}
