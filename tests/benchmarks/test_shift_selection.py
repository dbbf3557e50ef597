"""benchmarks/shift_selection.py: round 4's rule, and the script end to end on a real run and its copy."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import sys

import pytest

from conftest import DATA_ROOT, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
sel = importlib.import_module("shift_selection")


def _row(name, auc, low, val=0.998):
    return {"name": name, "auc": auc, "delta_low": low, "val_auc": val}


def test_rule_needs_the_whole_interval_above_zero_and_a_valid_run():
    rows = [_row("base", 0.80, None), _row("noise", 0.85, -0.01), _row("better", 0.83, 0.002),
            _row("best-but-invalid", 0.90, 0.05, val=0.98)]  # fmt: skip
    assert sel.decide(rows, 0.99) == "better"
    assert sel.decide(rows[:2], 0.99) is None  # a higher point estimate is not enough
    assert sel.decide([*rows, _row("even-better", 0.86, 0.01)], 0.99) == "even-better"


def test_script_scores_every_run_on_the_selection_set(tiny_run, tmp_path, monkeypatch):
    if not (DATA_ROOT / "nih_sample" / "labels.csv").is_file():
        pytest.skip("nih_sample not found")
    same = tmp_path / "same"
    shutil.copytree(tiny_run, same, ignore=shutil.ignore_patterns("eval"))
    out = tmp_path / "sel.json"
    monkeypatch.chdir(REPO)  # the recipe's data paths are relative to the repository
    argv = ["shift_selection.py", f"a={tiny_run}", f"b={same}", "--baseline", "a", "--n-boot", "200",
            "--work", str(tmp_path / "work"), "--out-json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    sel.main()
    d = json.loads(out.read_text())
    assert d["selection_set"]["n"] == 551 and d["selection_set"]["positives"] == 52
    assert d["selection_set"]["positive_patients"] == 18
    a, b = d["rows"]
    assert a["delta"] is None and b["delta"] == 0.0  # the same weights: the same scores, no winner
    assert b["delta_low"] == b["delta_high"] == 0.0 and d["winner"] is None
    with (tmp_path / "work" / "nih-selection.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 551 and {r["label"] for r in rows} == {"NORMAL", "PNEUMONIA"}
