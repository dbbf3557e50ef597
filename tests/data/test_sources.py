"""Multi-source manifests (data.sources): label mapping, source column, prefixed patients, per-source
splits, splits.csv round trip; a single source is unchanged."""

from __future__ import annotations

import csv

import pytest
import yaml

from lungxray.config import DataConfig, load_config
from lungxray.data.manifest import Manifest
from lungxray.data.readers import load_manifest
from lungxray.data.sources import map_row
from lungxray.data.splits import assign_splits, patients_across_splits
from lungxray.errors import ConfigError
from multisource import NIH_MAP, make_two_sources


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_two_sources(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def manifest(sources) -> Manifest:
    return load_manifest(load_config(None, {"data.sources": sources}).data)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["No Finding"], "NORMAL"),
        (["no finding"], "NORMAL"),  # any spelling of "No Finding"
        (["Pneumonia"], "PNEUMONIA"),
        (["Consolidation", "Effusion"], "PNEUMONIA"),  # any mapped positive label wins
        (["Effusion"], None),  # only unmapped labels: dropped
        (["No Finding", "Effusion"], None),  # normal only when every label maps to normal
    ],
)
def test_label_mapping_rule(labels, expected):
    assert map_row(labels, NIH_MAP)[0] == expected


def test_label_mapping_null_and_conflict_and_identity():
    assert map_row(["Pneumonia"], {"Pneumonia": None, "No Finding": "NORMAL"})[0] is None
    assert map_row(["a", "b"], {"a": "X", "b": "Y"})[0] is None  # two positive classes: ambiguous
    assert map_row(["PNEUMONIA"], {}) == ("PNEUMONIA", "")  # empty map keeps the label


def test_manifest_has_source_column_and_prefixed_patients(manifest):
    assert manifest.classes == ("NORMAL", "PNEUMONIA") and manifest.task == "binary"
    assert set(manifest.sources) == {"kermany", "nih"} and len(manifest.sources) == len(manifest)
    for p, s in zip(manifest.patients, manifest.sources, strict=True):
        assert p.startswith(s + ":")
    nih = manifest.subset([s == "nih" for s in manifest.sources])
    assert nih.class_counts() == {"NORMAL": 40, "PNEUMONIA": 52}  # every Pneumonia/Consolidation row
    assert sum("nih: labels" in why for _, why in manifest.dropped) == 10  # the other findings


def test_same_patient_id_in_two_sources_never_merges(sources):
    # the NIH rows read twice as two sources: the same raw patient ids, two source names
    twin = dict(sources[1], name="nih2")
    m = assign_splits(load_manifest(load_config(None, {"data.sources": [sources[1], twin]}).data), seed=0)
    raw = {p.split(":", 1)[1] for p in m.patients}
    assert len(set(m.patients)) == 2 * len(raw)  # "nih:X" and "nih2:X" are two patients
    assert patients_across_splits(m) == {}


def test_splits_grouped_by_patient_and_every_source_in_val(manifest):
    m = assign_splits(manifest, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert patients_across_splits(m) == {}
    for source in ("kermany", "nih"):
        part = m.subset([s == source for s in m.sources])
        assert {"train", "val", "test"} <= set(part.splits), source
        assert len(set(part.split("val").targets)) == 2  # val stratified within each source
    kermany_test = {p for p, s, sp in zip(m.paths, m.sources, m.splits, strict=True) if s == "kermany" and sp == "test"}
    assert kermany_test == {p for p in manifest.paths if "/test/" in p}  # the source's own test split kept
    assert assign_splits(manifest, seed=0).splits == m.splits  # deterministic


def test_splits_csv_round_trip_keeps_source(manifest, tmp_path):
    m = assign_splits(manifest, seed=0)
    m.to_csv(tmp_path / "splits.csv")
    back = Manifest.from_splits_csv(tmp_path / "splits.csv", classes=list(m.classes), task=m.task)
    assert back.sources == m.sources and back.patients == m.patients and back.splits == m.splits


def test_single_source_unchanged(sources, tmp_path):
    m = load_manifest(DataConfig(path=sources[0]["path"]))
    assert m.sources == () and set(m.source_names) == {"kermany"}
    assert not any(":" in p for p in m.patients)
    m = assign_splits(m, seed=0)
    m.to_csv(tmp_path / "splits.csv")
    with (tmp_path / "splits.csv").open(newline="") as fh:
        assert next(csv.reader(fh)) == ["path", "patient", "split", "label"]  # old format, no source
    old = Manifest.from_splits_csv(tmp_path / "splits.csv")
    assert old.sources == () and len(old.source_names) == len(old)


def test_config_sources_from_yaml_and_duplicate_names(tmp_path, sources):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"data": {"sources": sources}}))
    cfg = load_config(path)
    assert [s.source_name for s in cfg.data.sources] == ["kermany", "nih"]
    assert cfg.data.sources[1].label_map == NIH_MAP
    with pytest.raises(ConfigError, match="distinct names"):
        load_config(None, {"data.sources": [sources[0], sources[0]]})
    with pytest.raises(ConfigError):
        load_config(None, {"data.sources": [{"path": "x", "labelmap": {}}]})
