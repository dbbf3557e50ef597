"""benchmarks/quality.py: the literature table. Tests of the aggregation and the markdown on synthetic
per-run results, of each per-run part on random-weight runs, and an end-to-end run on tiny real subsets
(train, reuse without retraining, render-only)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA_ROOT, REPO, make_random_run, random_lung_run, require_data, xray_files

sys.path.insert(0, str(REPO / "benchmarks"))
quality = importlib.import_module("quality")
qt = importlib.import_module("quality_table")


def _entry(v: float, half: float = 0.05) -> dict:
    return {"value": v, "ci_low": v - half, "ci_high": v + half}


def _result(seed: int, auc: float, *, recipe: str = "r", epochs: int = 2, recipe_epochs: int = 30) -> dict:
    test = {"n": 10, "auc": _entry(auc), "accuracy": _entry(0.8), "sensitivity": _entry(0.9),
            "specificity": _entry(0.6), "f1": _entry(0.85), "accuracy_at05": _entry(0.8),
            "sensitivity_at05": _entry(0.9), "specificity_at05": _entry(0.6), "threshold": 0.5}  # fmt: skip
    return {
        "dataset": "chest_xray", "recipe": recipe, "seed": seed, "run": f"runs/{seed}", "task": "binary",
        "classes": ["NORMAL", "PNEUMONIA"], "epochs": epochs, "epochs_config": epochs,
        "epochs_recipe": recipe_epochs, "test": test, "n_test_duplicates": 0, "test_dedup": test,
        "shortcut": {"skipped": "no lungs"},
        "external": {"lung_masks": {"specificity": _entry(0.2), "ood_rate": 0.5, "n": 5},
                     "hannover_covid19": {"sensitivity": _entry(1.0, 0.0), "ood_rate": 0.25, "n": 4}},
    }  # fmt: skip


def test_aggregate_mean_sd_ci_envelope_and_capping():
    rows = qt.aggregate(
        [_result(1, 0.90), _result(0, 0.80), _result(2, 0.85), _result(0, 0.7, recipe="full", epochs=30)]
    )
    by = {r["recipe"]: r for r in rows}
    r = by["r"]
    assert r["n_seeds"] == 3 and r["seeds"] == [0, 1, 2]
    assert r["auc_mean"] == pytest.approx(0.85)
    assert r["auc_sd"] == pytest.approx(0.05)  # sample SD (ddof 1) of 0.80, 0.85, 0.90
    assert r["auc_values"] == pytest.approx([0.80, 0.90, 0.85])  # in seed order 0, 1, 2
    assert r["auc_ci"] == pytest.approx([0.75, 0.95])  # lowest low, highest high of the seeds' CIs
    assert r["capped"] is True and r["epochs"] == [2, 2, 2] and r["epochs_recipe"] == 30
    assert r["ext_lung_masks_specificity_mean"] == pytest.approx(0.2)
    assert r["ext_hannover_ood_rate_mean"] == pytest.approx(0.25)
    assert r["shortcut_note"] == "no lungs"
    full = by["full"]
    assert full["capped"] is False and full["auc_sd"] is None  # one seed: no SD


def test_mean_sd_ignores_missing_values():
    assert qt.mean_sd([None, 1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert qt.mean_sd([None]) == (None, None)


def test_markdown_marks_capped_rows_errors_and_published_and_splices(tmp_path):
    bf16 = {**_result(2, 0.9, recipe="full", epochs=30), "bf16": True}
    rows = qt.aggregate([_result(0, 0.8), _result(1, 0.9), _result(0, 0.95, recipe="full", epochs=30), bf16])
    assert [r["bf16_seeds"] for r in rows] == [[], [2]]
    err = [{"dataset": "nih_sample", "recipe": "cnn-2x2-stride", "seed": 0, "error": "ModelError: too small"}]
    block = qt.render_markdown(rows, err)
    assert "| r † | 2 of 30 | 2 | 10 | 0.850 ± 0.071 [0.750, 0.950]" in block
    assert "| full ‡ | 30 of 30 | 2 | 10 | 0.925 ± 0.035 [0.850, 1.000]" in block
    assert "cnn-2x2-stride: could not run here: ModelError: too small" in block
    assert "0.989 | 0.916" in block and "not run here" in block  # DINO ViT-B/16 (published)
    assert "Not computed: no lungs" in block

    doc = "# Measured figures\n\ntext\n"
    once = qt.splice(doc, block)
    assert once.count(qt.MARK_BEGIN) == 1 and qt.SECTION in once and once.startswith(doc.rstrip())
    again = qt.splice(once, "new block\n")
    assert again.count(qt.MARK_BEGIN) == 1 and "new block" in again and block not in again
    assert again.split(qt.MARK_BEGIN)[0] == once.split(qt.MARK_BEGIN)[0]


def test_compact_metrics_and_flatten_on_real_metric_bodies():
    from lungxray.evaluation.metrics import evaluate_predictions

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    prob = rng.dirichlet(np.ones(3), 60)
    body = evaluate_predictions("multiclass", y, prob, ["Normal", "Covid", "Viral"], n_boot=20)
    part = quality.compact_metrics(body)
    values, cis = qt.flatten({"test": part, "test_dedup": part})
    assert set(values) >= {"accuracy", "macro_f1", "recall_Covid", "dedup_recall_Viral"}
    assert values["accuracy"] == pytest.approx(np.mean(prob.argmax(1) == y))
    assert cis["accuracy"][0] <= values["accuracy"] <= cis["accuracy"][1]

    body = evaluate_predictions(
        "binary", y > 0, prob[:, 0], ["NORMAL", "PNEUMONIA"], threshold=0.3, n_boot=20
    )
    part = quality.compact_metrics(body)
    assert part["threshold"] == 0.3 and part["accuracy_at05"] == body["at_0.5"]["accuracy"]


def test_adopt_refuses_an_incompatible_run(tmp_path):
    from lungxray.config import load_config, save_config

    src = tmp_path / "src"
    src.mkdir()
    save_config(load_config(REPO / "configs" / "cpu-default.yaml", {"train.seed": 1, "data.path": "/d/chest_xray"}),
                src / "config.yaml")  # fmt: skip
    (src / "model.json").write_text("{}")
    with pytest.raises(SystemExit, match="train.seed 1"):
        quality.adopt(f"{src}=chest_xray/cpu-default/seed0", tmp_path / "runs")
    with pytest.raises(SystemExit, match="model.name 'cnn-small'"):
        quality.adopt(f"{src}=chest_xray/cnn-64-elu/seed1", tmp_path / "runs")
    quality.adopt(f"{src}=chest_xray/cpu-default/seed1", tmp_path / "runs")
    assert (tmp_path / "runs" / "chest_xray" / "cpu-default" / "seed1" / "model.json").is_file()


def test_end_to_end_trains_reuses_and_renders(tmp_path):
    """1 recipe x 2 data sets on ~80 images each at 32 px, 1 epoch (about 20 s; 65 s on busy shared cores)."""
    require_data(DATA_ROOT / "covid19")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Measured figures\n\nearlier text\n")
    args = ["--recipes", "cnn-64-elu", "--seeds", "0", "--datasets", "chest_xray,covid19", "--data", str(DATA_ROOT),
            "--runs", str(tmp_path / "runs"), "--max-epochs", "1", "--set", "data.max_images=80",
            "--set", "data.size=32", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--n-boot", "20",
            "--max-external", "8", "--threads", "1", "--out-json", str(tmp_path / "q.json"), "--doc", str(doc)]  # fmt: skip
    first = quality.main(args)
    assert [r["reused"] for r in first["runs"]] == [False, False]
    assert not any("error" in r for r in first["runs"])
    rows = {
        r["dataset"]: r
        for r in json.loads((tmp_path / "q.json").read_text())["rows"]
        if not r.get("published")
    }
    cx, cv = rows["chest_xray"], rows["covid19"]
    for r in (cx, cv):
        assert r["recipe"] == "cnn-64-elu" and r["n_seeds"] == 1 and r["epochs"] == [1]
        assert r["epochs_recipe"] == 30 and r["capped"] is True
        assert 0.0 <= r["accuracy_mean"] <= 1.0
    assert 0.0 <= cx["auc_mean"] <= 1.0 and 0.0 <= cx["sensitivity_mean"] <= 1.0
    assert (
        0.0 <= cx["ext_lung_masks_specificity_mean"] <= 1.0 and 0.0 <= cx["ext_hannover_ood_rate_mean"] <= 1.0
    )
    assert "lungs" in cx["shortcut_note"]
    assert cv["classes"] == ["Normal", "Covid", "Viral Pneumonia"] and "dedup_macro_f1_mean" in cv
    assert 0.0 <= cv["recall_Covid_mean"] <= 1.0
    text = doc.read_text()
    assert text.startswith("# Measured figures\n\nearlier text") and text.count(qt.MARK_BEGIN) == 1
    assert "| cnn-64-elu † | 1 of 30 | 1 |" in text.split(qt.MARK_BEGIN)[1].split(qt.MARK_END)[0]

    model = tmp_path / "runs" / "chest_xray" / "cnn-64-elu" / "seed0" / "model.json"
    mtime = model.stat().st_mtime_ns
    second = quality.main(args)
    assert [r["reused"] for r in second["runs"]] == [True, True]
    assert model.stat().st_mtime_ns == mtime
    assert json.loads((tmp_path / "q.json").read_text())["rows"][:2] == [cx, cv]

    doc.write_text("# Measured figures\n")
    (tmp_path / "q.json").unlink()
    only = quality.main([*args, "--render-only"])
    assert only["runs"] == [] and len(only["rows"]) == 2 and (tmp_path / "q.json").is_file()
    assert qt.MARK_BEGIN in doc.read_text()


def _random_run_with_splits(tmp_path, files: dict[str, list[tuple[Path, str]]]) -> Path:
    """A random-weight 64 px run whose splits.csv lists ``files`` ({split: [(path, label)]})."""
    run = make_random_run(tmp_path / "cls", size=64)
    lines = ["path,patient,split,label"]
    lines += [f"{p},{p.stem},{split},{label}" for split, rows in files.items() for p, label in rows]
    (run / "splits.csv").write_text("\n".join(lines) + "\n")
    return run


def test_duplicated_test_rows_are_found_and_left_out_of_the_same_predictions(tmp_path, cache_dir, one_thread):
    import shutil

    from lungxray.evaluation.evaluate import evaluate_run
    from lungxray.runcard import RunCard

    src = xray_files(3, "NORMAL") + xray_files(3, "PNEUMONIA")
    (tmp_path / "imgs").mkdir()
    dup = shutil.copy(src[3], tmp_path / "imgs" / "copy-of-train.jpeg")  # the same bytes under another name
    files = {"train": [(src[3], "PNEUMONIA"), (src[0], "NORMAL")],
             "test": [(Path(dup), "PNEUMONIA"), (src[1], "NORMAL"), (src[2], "NORMAL"), (src[4], "PNEUMONIA"),
                      (src[5], "PNEUMONIA")]}  # fmt: skip
    run = _random_run_with_splits(tmp_path, files)
    card = RunCard.read(run)
    dups = quality.test_duplicates(run, card, str(cache_dir))
    assert dups == [str(dup)]
    evaluate_run(run, n_boot=10, progress=False, cache_dir=cache_dir)
    part = quality.metrics_without(run, card, set(dups), n_boot=10, seed=0)
    assert part["n"] == 4 and part["n_removed"] == 1
    kept = quality.compact_metrics(json.loads((run / "eval" / "test" / "metrics.json").read_text()))
    assert (
        kept["n"] == 5 and part["specificity"]["value"] == kept["specificity"]["value"]
    )  # normals untouched


def test_shortcut_and_external_parts_on_a_random_run(tmp_path, cache_dir, one_thread):
    pytest.importorskip("segmentation_models_pytorch")
    pytest.importorskip("pytorch_grad_cam")
    require_data(DATA_ROOT / "lung_masks")
    from lungxray.runcard import RunCard
    lungs = tmp_path / "lungs"
    random_lung_run(lungs)
    test = [(p, "NORMAL") for p in xray_files(3, "NORMAL")] + [(p, "PNEUMONIA") for p in xray_files(3)]
    run = _random_run_with_splits(tmp_path, {"test": test})
    sc = quality.shortcut_part(run, str(lungs), n_boot=10)
    assert sc["n"] == 6 and 0.0 <= sc["cam_in_lungs"] <= 1.0 and sc["lungs"] == str(lungs)
    assert 0.0 <= sc["auc_lungs_blanked"]["value"] <= 1.0
    values, _ = qt.flatten({"shortcut": sc})
    assert set(values) >= {"cam_in_lungs", "auc_plain", "auc_only_lungs"}

    ext = quality.external_part(
        run, RunCard.read(run), DATA_ROOT, n_boot=10, max_images=4, cache_dir=str(cache_dir)
    )
    assert ext["lung_masks"]["n"] == 4 and ext["hannover_covid19"]["n"] == 4
    assert ext["lung_masks"]["specificity"]["value"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert 0.0 <= ext["hannover_covid19"]["ood_rate"] <= 1.0


def test_config_diff_names_what_a_reused_run_does_differently():
    from lungxray.config import load_config

    recipe = REPO / "configs" / "cnn-64-elu.yaml"
    asked = quality.run_config(recipe, "covid19", Path("/d"), Path("/runs/x"), 1, 5, {})
    assert asked.train.epochs == 5 and asked.train.seed == 1 and asked.data.path == "/d/covid19"
    same = load_config(recipe, {"data.path": "/d/covid19", "train.seed": 1, "train.epochs": 5, "out": "/elsewhere",
                                "train.threads": 1})  # fmt: skip
    assert quality.config_diff(same, asked) == {}
    smoke = load_config(
        recipe, {"data.path": "/d/covid19", "train.seed": 1, "train.epochs": 1, "data.max_images": 80}
    )
    assert quality.config_diff(smoke, asked) == {"data.max_images": [80, None], "train.epochs": [1, 5]}


def test_external_films_go_through_the_runs_own_preprocessing(tmp_path, cache_dir, one_thread):
    """A CLAHE run scores the external films as `lungxray predict` would (CLAHE applied), not plain inputs:
    with the threshold at the median CLAHE score, the rate is exactly predict's (plain inputs move it)."""
    from dataclasses import replace

    from lungxray.predict import Predictor
    from lungxray.runcard import Calibration, RunCard

    require_data(DATA_ROOT / "lung_masks")
    run = _random_run_with_splits(tmp_path, {"test": [(p, "NORMAL") for p in xray_files(2, "NORMAL")]})
    card = RunCard.read(run)
    card = replace(card, preprocessing=replace(card.preprocessing, window="clahe"))
    card.write(run)
    paths = quality.external_sets(DATA_ROOT, 12)["lung_masks"][0]
    scores = np.array([p.score for p in Predictor.load(run).predict_paths(paths)])
    t = float(np.sort(scores)[5] + np.sort(scores)[6]) / 2  # 6 of 12 called NORMAL under CLAHE
    card = card.with_calibration(Calibration(strategy="0.5", split="test-fixture", threshold=t))
    card.write(run)
    ext = quality.external_part(run, card, DATA_ROOT, n_boot=10, max_images=12, cache_dir=str(cache_dir))
    assert ext["lung_masks"]["specificity"]["value"] == pytest.approx(np.mean(scores < t)) == 0.5
