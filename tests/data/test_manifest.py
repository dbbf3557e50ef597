"""Manifest construction from folders and CSVs: real data sets, generated folders, and every user error."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA_ROOT  # noqa: E402
from lungxray.config import DataConfig
from lungxray.data.manifest import Manifest, order_classes
from lungxray.data.readers import from_csv, from_folders, load_manifest
from lungxray.errors import ConfigError, DataError

CHEST = DATA_ROOT / "chest_xray"
COVID = DATA_ROOT / "covid19"
NIH = DATA_ROOT / "nih_sample"

needs_chest = pytest.mark.skipif(not CHEST.is_dir(), reason="chest_xray data set not present")
needs_covid = pytest.mark.skipif(not COVID.is_dir(), reason="covid19 data set not present")
needs_nih = pytest.mark.skipif(not NIH.is_dir(), reason="nih_sample data set not present")


def write_png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (16, 16), value).save(path)
    return path


def make_tree(root: Path, layout: dict[str, int]) -> Path:
    """Write ``n`` tiny PNGs into each relative folder of ``layout`` ({"train/A": 3, ...})."""
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_png(root / folder / f"img{i:03d}.png", 10 * i)
    return root


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def chest() -> Manifest:
    if not CHEST.is_dir():
        pytest.skip("chest_xray data set not present")
    return from_folders(CHEST)


@pytest.fixture(scope="module")
def nih() -> Manifest:
    if not NIH.is_dir():
        pytest.skip("nih_sample data set not present")
    return from_csv(NIH / "labels.csv")


# ------------------------------------------------------------------------------------ real data sets


@needs_chest
def test_chest_xray_folders(chest: Manifest):
    assert len(chest) == 5840
    assert chest.classes == ("NORMAL", "PNEUMONIA")
    assert chest.task == "binary"
    assert chest.splits.count("train") == 5216 and chest.splits.count("test") == 624
    assert chest.class_counts("train") == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert chest.class_counts("test") == {"NORMAL": 234, "PNEUMONIA": 390}
    assert list(chest.paths) == sorted(chest.paths)
    assert all(os.path.isabs(p) and p.lower().endswith((".jpeg", ".jpg", ".png")) for p in chest.paths)
    # targets: 1 exactly where the file sits in a PNEUMONIA folder
    in_pneumonia = np.array([Path(p).parent.name == "PNEUMONIA" for p in chest.paths])
    assert chest.targets.dtype == np.int64
    np.testing.assert_array_equal(chest.targets, in_pneumonia.astype(np.int64))
    i = next(i for i, p in enumerate(chest.paths) if Path(p).name.startswith("person1_"))
    assert chest.patients[i] == "person1"
    assert chest.root == str(CHEST)


@needs_covid
def test_covid19_is_multiclass_with_normal_first():
    m = from_folders(COVID)
    assert m.task == "multiclass"
    assert m.classes == ("Normal", "Covid", "Viral Pneumonia")
    assert len(m) == 317 and m.splits.count("train") == 251 and m.splits.count("test") == 66
    np.testing.assert_array_equal(m.labels.sum(axis=1), 1)
    assert set(np.unique(m.targets)) == {0, 1, 2}
    names = np.array([Path(p).parent.name for p in m.paths])
    np.testing.assert_array_equal(np.array(m.classes)[m.targets], names)


@needs_nih
def test_nih_csv_is_multilabel(nih: Manifest):
    assert nih.task == "multilabel"
    assert len(nih) == 1000 and len(nih.classes) == 14
    assert "No Finding" not in nih.classes and "Effusion" in nih.classes
    assert len(set(nih.patients)) == 264
    assert set(nih.splits) == {""}
    assert nih.targets.shape == (1000, 14)
    with open(NIH / "labels.csv", newline="") as f:
        rows = {r["Image Index"]: r for r in csv.DictReader(f)}
    for path, row, patient in zip(nih.paths, nih.labels, nih.patients, strict=True):
        source = rows[Path(path).name]
        expected = {x for x in source["Finding Labels"].split("|") if x != "No Finding"}
        assert {c for c, v in zip(nih.classes, row, strict=True) if v == 1} == expected
        assert patient == source["Patient ID"]
    assert int((nih.labels.sum(axis=1) == 0).sum()) == 499  # "No Finding": all zeros
    assert (nih.labels.sum(axis=1) > 1).any()


@needs_nih
def test_nih_binary_negative():
    m = from_csv(NIH / "labels.csv", binary_negative="No Finding")
    assert m.task == "binary" and m.classes == ("normal", "abnormal")
    assert m.class_counts() == {"normal": 499, "abnormal": 501}
    assert int(m.targets.sum()) == 501


@needs_nih
def test_splits_csv_round_trip(nih: Manifest, tmp_path):
    m = nih.with_splits(["train"] * 600 + ["val"] * 200 + ["test"] * 200)
    m.to_csv(tmp_path / "splits.csv")
    with open(tmp_path / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "patient", "split", "label"]
    back = Manifest.from_splits_csv(tmp_path / "splits.csv", classes=m.classes, task="multilabel")
    assert back.paths == m.paths and back.patients == m.patients and back.splits == m.splits
    np.testing.assert_array_equal(back.labels, m.labels)
    # inferred classes and task from the file alone
    inferred = Manifest.from_splits_csv(tmp_path / "splits.csv")
    assert inferred.task == "multilabel" and inferred.classes == m.classes


@needs_chest
def test_subset_split_and_with_splits(chest: Manifest):
    test = chest.split("test")
    assert len(test) == 624 and set(test.splits) == {"test"}
    assert len(chest.split("val")) == 0 and chest.split("val").labels.shape == (0, 2)
    by_int = chest.subset(np.array([5, 0, 3]))
    assert by_int.paths == (chest.paths[5], chest.paths[0], chest.paths[3])
    np.testing.assert_array_equal(by_int.labels, chest.labels[[5, 0, 3]])
    mask = np.zeros(len(chest), dtype=bool)
    mask[[1, 2]] = True
    assert chest.subset(mask).paths == chest.paths[1:3]
    with pytest.raises(ValueError, match="length"):
        chest.subset(mask[:-1])
    relabelled = chest.with_splits([""] * len(chest))
    assert set(relabelled.splits) == {""} and set(chest.splits) == {"train", "test"}
    with pytest.raises(ValueError):
        chest.with_splits(["train"])


def test_manifest_validates_its_fields():
    ok = dict(paths=("a", "b"), classes=("x", "y"), task="binary", patients=("1", "2"), splits=("", ""))
    Manifest(labels=np.eye(2), **ok)
    with pytest.raises(ValueError, match="shape"):
        Manifest(labels=np.ones((3, 2)), **ok)
    with pytest.raises(ValueError, match="NaN"):
        Manifest(labels=np.array([[np.nan, 1], [1, 0]]), **ok)
    with pytest.raises(ValueError, match="split"):
        Manifest(labels=np.eye(2), **{**ok, "splits": ("train", "holdout")})
    with pytest.raises(ConfigError, match="multilabel"):
        Manifest(labels=np.eye(2), **{**ok, "task": "multilable"})
    nan_ok = Manifest(labels=np.array([[np.nan, 1], [1, 0]]), **{**ok, "task": "multilabel"})
    assert np.isnan(nan_ok.targets[0, 0]) and nan_ok.class_counts() == {"x": 1, "y": 1}


def test_order_classes_puts_normal_first():
    assert order_classes(["PNEUMONIA", "NORMAL"]) == ("NORMAL", "PNEUMONIA")
    assert order_classes(["Mass", "No Finding", "Effusion"]) == ("No Finding", "Effusion", "Mass")
    assert order_classes(["tb", "Healthy"]) == ("Healthy", "tb")
    assert order_classes(["b", "A", "c"]) == ("A", "b", "c")


# ------------------------------------------------------------------------------------ generated folders


def test_split_folder_aliases_nesting_and_non_images(tmp_path):
    make_tree(
        tmp_path,
        {"Train/sick": 3, "Train/normal": 2, "Validation/sick": 1, "Validation/normal": 1, "TEST/sick": 1},
    )
    write_png(tmp_path / "Train/sick/nested/deeper.png")
    (tmp_path / "Train/sick/notes.txt").write_text("not an image")
    write_png(tmp_path / "Train/sick/.hidden.png")
    m = from_folders(tmp_path)
    assert m.classes == ("normal", "sick") and m.task == "binary"
    assert m.splits.count("train") == 6 and m.splits.count("val") == 2 and m.splits.count("test") == 1
    assert any(p.endswith("deeper.png") for p in m.paths)
    assert not any(p.endswith((".txt", ".hidden.png")) for p in m.paths)


def test_flat_class_folders_and_forced_task(tmp_path):
    make_tree(tmp_path, {"a": 2, "b": 2, "c": 2})
    m = from_folders(tmp_path)
    assert m.task == "multiclass" and set(m.splits) == {""}
    assert from_folders(tmp_path, task="multilabel").task == "multilabel"
    with pytest.raises(DataError, match="binary"):
        from_folders(tmp_path, task="binary")
    with pytest.raises(ConfigError, match="multiclass"):
        from_folders(tmp_path, task="multi-class")
    two = make_tree(tmp_path / "two", {"x": 1, "y": 1})
    assert from_folders(two, task="multiclass").task == "multiclass"


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "no images"),
        ({"only": 3}, "only one class"),
        ({"a": 2, "b": 0}, "has no images"),
        ({"train/a": 2, "train/b": 2, "test/a": 1, "test/c": 1}, r"\['c'\] appear in test"),
        ({"train/a": 2, "train/b": 2, "extra/a": 1}, "extra"),
        ({"train": 0, "test/a": 1, "test/b": 1}, "train/ has no class folders"),
    ],
)
def test_folder_errors(tmp_path, layout, message):
    make_tree(tmp_path, layout)
    with pytest.raises(DataError, match=message):
        from_folders(tmp_path)


def test_missing_folder_and_loose_images(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        from_folders(tmp_path / "nope")
    write_png(tmp_path / "loose.png")
    make_tree(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(DataError, match="loose.png"):
        from_folders(tmp_path)


# ------------------------------------------------------------------------------------ generated CSVs


def test_single_label_csv_with_images_folder_and_split_column(tmp_path):
    for i in range(4):
        write_png(tmp_path / "images" / f"p{i}_{i}.png")
    csv_path = write_csv(
        tmp_path / "labels.csv",
        ["file", "class", "split"],
        [
            ["p0_0.png", "tb", "train"],
            ["p1_1.png", "healthy", "Valid"],
            ["p2_2.png", "tb", ""],
            ["p3_3.png", "healthy", "test"],
        ],
    )
    m = from_csv(csv_path, split_col="split")
    assert m.classes == ("healthy", "tb") and m.task == "binary"
    assert m.splits == ("train", "val", "", "test")
    assert m.targets.tolist() == [1, 0, 1, 0]
    assert m.patients == ("p0_0", "p1_1", "p2_2", "p3_3")  # no patient column: file-name rules (stem)
    assert m.paths[0] == os.path.abspath(tmp_path / "images" / "p0_0.png")
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        write_csv(
            csv_path, ["file", "class", "split"], [["p0_0.png", "tb", "holdout"], ["p1_1.png", "healthy", ""]]
        )
        from_csv(csv_path, split_col="split")


def test_csv_multiclass_root_and_forced_multilabel(tmp_path):
    data = tmp_path / "data"
    for i in range(3):
        write_png(data / f"{i}.png")
    csv_path = write_csv(
        tmp_path / "t.csv", ["filename", "label"], [["0.png", "a"], ["1.png", "b"], ["2.png", "c"]]
    )
    m = from_csv(csv_path, root=data)
    assert m.task == "multiclass" and m.classes == ("a", "b", "c")
    forced = from_csv(csv_path, root=data, task="multilabel")
    assert forced.task == "multilabel" and forced.labels.sum() == 3
    with pytest.raises(DataError, match="binary"):
        from_csv(csv_path, root=data, task="binary")


def test_csv_column_errors_name_the_available_columns(tmp_path):
    write_png(tmp_path / "a.png")
    csv_path = write_csv(tmp_path / "t.csv", ["Image Index", "Finding Labels", "Age"], [["a.png", "Mass"]])
    with pytest.raises(
        DataError,
        match=r"Did you mean 'Finding Labels'.*Available columns: \['Image Index', 'Finding Labels', 'Age'\]",
    ):
        from_csv(csv_path, label_col="Finding Label")
    with pytest.raises(DataError, match="no patient column 'patient'"):
        from_csv(csv_path, patient_col="patient")
    no_file = write_csv(tmp_path / "u.csv", ["name", "label"], [["a.png", "x"]])
    with pytest.raises(DataError, match=r"no file column found.*\['name', 'label'\]"):
        from_csv(no_file)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        from_csv(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="does not exist"):
        from_csv(tmp_path / "absent.csv")


def test_csv_missing_files_dropped_or_fatal(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    csv_path = write_csv(
        tmp_path / "t.csv",
        ["path", "label"],
        [["a.png", "x"], ["gone.png", "x"], ["b.png", "y"], ["a.png", "x"]],
    )
    with pytest.warns(UserWarning, match="2 of 4 rows dropped"):
        m = from_csv(csv_path)
    assert len(m) == 2 and m.classes == ("x", "y")
    assert m.dropped == (
        (str(tmp_path / "gone.png"), "file not found"),
        (os.path.abspath(tmp_path / "a.png"), "duplicate row in the CSV"),
    )
    all_gone = write_csv(tmp_path / "g.csv", ["path", "label"], [["x.png", "x"], ["y.png", "y"]])
    with pytest.raises(DataError, match="none of the 2 files"):
        from_csv(all_gone)


def test_csv_label_errors(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    one_class = write_csv(tmp_path / "one.csv", ["path", "label"], [["a.png", "x"], ["b.png", "x"]])
    with pytest.raises(DataError, match="only one class"):
        from_csv(one_class)
    blank = write_csv(tmp_path / "blank.csv", ["path", "label"], [["a.png", "x"], ["b.png", ""]])
    with pytest.raises(DataError, match="empty 'label' cell"):
        from_csv(blank)
    multi = write_csv(tmp_path / "multi.csv", ["path", "label"], [["a.png", "x|y"], ["b.png", "No Finding"]])
    with pytest.raises(DataError, match="no row has the label 'Normal'"):
        from_csv(multi, binary_negative="Normal")
    with pytest.raises(DataError, match="several"):
        from_csv(multi, task="multiclass")
    m = from_csv(multi)
    assert m.task == "multilabel" and m.classes == ("x", "y") and m.labels.tolist() == [[1, 1], [0, 0]]


def test_load_manifest_dispatch(tmp_path):
    make_tree(tmp_path, {"a": 2, "b": 1})
    m = load_manifest(DataConfig(path=str(tmp_path)))
    assert m.classes == ("a", "b") and len(m) == 3
    write_csv(tmp_path / "labels.csv", ["path", "label"], [["a/img000.png", "p"], ["b/img000.png", "q"]])
    c = load_manifest(DataConfig(path=str(tmp_path), csv="labels.csv", task="multiclass"))
    assert (
        c.task == "multiclass"
        and c.classes == ("p", "q")
        and c.paths[1].endswith(os.path.join("b", "img000.png"))
    )
    absolute = load_manifest(DataConfig(path=str(tmp_path), csv=str(tmp_path / "labels.csv")))
    assert absolute.paths == c.paths
    with pytest.raises(DataError, match="data.path"):
        load_manifest(DataConfig())
