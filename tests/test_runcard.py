"""RunCard: the typed model.json. Round trips, the decision rules, the calibration history, and the
upgrade of version-1 files (written before the RunCard) in memory and on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lungxray.errors import RunError
from lungxray.runcard import SCHEMA_VERSION, Calibration, Preprocessing, RunCard, upgrade_run
from lungxray.rundir import load_run

V1 = {  # a model.json as lungxray 0.1.0 wrote it before the RunCard (flat keys, format_version 1)
    "format_version": 1,
    "created": "2026-11-30T10:00:00+00:00",
    "lungxray_version": "0.1.0",
    "disclaimer": "Decision support only.",
    "name": "cpu-default",
    "architecture": "cnn-small",
    "model_kwargs": {},
    "in_chans": 1,
    "input_size": 64,
    "resize": "stretch",
    "normalization": {"mean": 0.449, "std": 0.226},
    "classes": ["NORMAL", "PNEUMONIA"],
    "task": "binary",
    "threshold_strategy": "youden",
    "ood": {"method": "mahalanobis", "dim": 32, "threshold": 12.5, "quantile": 0.99},
    "training": {"data": "/data/chest_xray", "epochs_run": 10, "best_epoch": 7, "counts": {"train": {"NORMAL": 3}}},
    "positive_class": "PNEUMONIA",
    "threshold": 0.498,
}


def card(task: str = "binary", classes=("NORMAL", "PNEUMONIA"), **cal) -> RunCard:
    return RunCard(
        name="t",
        architecture="cnn-small",
        task=task,
        classes=tuple(classes),
        preprocessing=Preprocessing(input_size=64),
        calibrations=(Calibration(strategy="youden", **cal),),
    )


def test_round_trip_is_exact():
    c = card(threshold=0.3)
    again = RunCard.from_json(c.to_json())
    assert again == RunCard.from_json(again.to_json())
    assert again.threshold == 0.3 and again.classes == c.classes and again.preprocessing == c.preprocessing
    assert json.loads(c.to_json())["schema_version"] == SCHEMA_VERSION


def test_binary_decision_is_at_or_above_the_threshold_even_at_zero():
    c = card(threshold=0.0)  # a stored 0.0 is a threshold, not "missing" (an old `or 0.5` bug)
    assert c.threshold == 0.0
    np.testing.assert_array_equal(c.decide(np.array([[0.0], [0.2]])), [1, 1])
    c = card(threshold=0.4)
    np.testing.assert_array_equal(c.decide(np.array([[0.39999], [0.4], [0.9]])), [0, 1, 1])
    assert c.label_names(1) == "PNEUMONIA" and c.explain_target(np.array([0.1])) == "PNEUMONIA"


def test_multiclass_and_multilabel_rules():
    mc = card("multiclass", ("Normal", "Covid", "Viral"))
    prob = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    np.testing.assert_array_equal(mc.decide(prob), [1, 0])
    assert mc.explain_target(prob[0]) == "Covid" and mc.threshold is None and mc.thresholds is None
    ml = card("multilabel", ("A", "B", "C"), thresholds=(0.5, 0.9, 0.1))
    d = ml.decide(np.array([[0.6, 0.8, 0.05]]))
    assert d.tolist() == [[True, False, False]] and ml.label_names(d[0]) == ["A"]
    assert ml.explain_targets(np.array([0.6, 0.95, 0.2])) == ["A", "B", "C"]
    assert ml.explain_targets(np.array([0.1, 0.2, 0.05])) == ["B"]  # none positive: the most likely


def test_calibrations_append_and_the_last_is_in_force():
    c = card(threshold=0.3)
    site = c.with_calibration(Calibration(strategy="sensitivity>=0.95", split="site-a", threshold=0.12, n=200))
    assert [x.split for x in site.calibrations] == ["val", "site-a"]
    assert site.threshold == 0.12 and c.threshold == 0.3  # the original card is unchanged (frozen)
    assert site.calibration.created  # stamped
    with pytest.raises(RunError, match="needs a threshold"):
        c.with_calibration(Calibration(strategy="youden"))


def test_version_1_file_is_upgraded_in_memory():
    c = RunCard.from_dict(dict(V1))
    assert c.threshold == 0.498 and c.threshold_strategy == "youden" and c.calibration.split == "val"
    assert c.input_size == 64 and c.normalization == {"mean": 0.449, "std": 0.226}
    assert c.ood.threshold == 12.5 and c.training.best_epoch == 7 and c.created == V1["created"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"hello": 1}, "not written by lungxray"),
        ({**V1, "format_version": 7}, "format_version 7"),
        ({k: v for k, v in V1.items() if k != "classes"}, "lacks the key"),
        ({"schema_version": SCHEMA_VERSION + 1}, "newer than this lungxray"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_foreign_or_future_files_get_a_clear_error(doc, message):
    with pytest.raises(RunError, match=message):
        RunCard.from_dict(doc)


def test_read_names_the_problem(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        RunCard.read(tmp_path / "nope")
    with pytest.raises(RunError, match="no model.json"):
        RunCard.read(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        RunCard.read(tmp_path)


def test_a_run_written_before_the_runcard_loads_and_upgrades_on_disk(tiny_run, tmp_path):
    """Old run directories still load; `lungxray upgrade-run` rewrites them and keeps the original."""
    import shutil

    run = tmp_path / "old"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.pt", "figures", "eval"))
    new = RunCard.read(run)
    v1 = {**V1, "name": new.name, "threshold": new.threshold, "ood": {"threshold": new.ood.threshold, "dim": new.ood.dim}}
    (run / "model.json").write_text(json.dumps(v1))
    loaded = load_run(run)
    assert loaded.card.threshold == new.threshold and loaded.card.ood.threshold == new.ood.threshold
    done = subprocess.run(
        [sys.executable, "-m", "lungxray.cli", "upgrade-run", str(run)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "model.json").read_text())["schema_version"] == SCHEMA_VERSION
    assert json.loads((run / "model.v1.json").read_text()) == v1
    assert RunCard.read(run).threshold == new.threshold
    assert upgrade_run(run) is False  # already current
    assert Path(run / "model.v1.json").is_file()
