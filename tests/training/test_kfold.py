"""k-fold ensembles: folds, the OOF table and threshold, the ensemble run downstream, per-fold resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_training import make_cfg, read_csv
from safetensors.torch import load_file

from conftest import xray_files
from lungxray.config import load_config
from lungxray.data.splits import assign_folds
from lungxray.evaluation.metrics import choose_threshold
from lungxray.models.factory import create_model
from lungxray.runcard import RunCard
from lungxray.rundir import load_run
from lungxray.training import train
from lungxray.training.kfold import FOLD_DONE, FOLDS_DIR

K = 3


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-fold ensemble of cnn-small (width 4) on 60 real images at 32 px, 1 epoch per member (~15 s)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kfold")
    cfg = make_cfg(root / "run", root / "cache", **{"model.kwargs": {"width": 4}, "train.folds": K,
                                                    "eval.bootstrap": 50})  # fmt: skip
    train(cfg, progress=False)
    return root / "run"


def test_folds_are_patient_grouped_stratified_and_never_test(kfold_run: Path) -> None:
    from lungxray.data.manifest import Manifest

    m = Manifest.from_splits_csv(kfold_run / "splits.csv")
    folds = assign_folds(m, K, seed=0)
    splits = np.asarray(m.splits)
    assert set(splits) == {"train", "test"}  # val pooled into train
    assert (folds[splits == "test"] == -1).all() and (folds[splits == "train"] >= 0).all()
    patients = np.asarray(m.patients)
    for p in set(patients.tolist()):
        assert len(set(folds[patients == p].tolist())) == 1  # a patient sits in one fold
    y = m.targets
    for j in range(K):
        share = y[folds == j].mean()
        assert abs(share - y[folds >= 0].mean()) < 0.15, (j, share)


def test_run_is_complete_and_oof_covers_every_non_test_row_once(kfold_run: Path) -> None:
    for name in ("config.yaml", "splits.csv", "oof.csv", "model.json", "model.safetensors", "data.sha1.json"):
        assert (kfold_run / name).is_file(), name
    for j in range(K):
        fold = kfold_run / FOLDS_DIR / f"fold-{j}"
        for name in ("best.safetensors", "history.csv", "splits.csv", FOLD_DONE):
            assert (fold / name).is_file(), (j, name)
    splits = read_csv(kfold_run / "splits.csv")
    oof = read_csv(kfold_run / "oof.csv")
    non_test = sorted(r["path"] for r in splits if r["split"] != "test")
    assert sorted(r["path"] for r in oof) == non_test  # each exactly once, no test row
    assert {int(r["fold"]) for r in oof} == set(range(K))
    for j in range(K):  # each row's OOF prediction comes from the member that validated on it
        val = {r["path"] for r in read_csv(kfold_run / FOLDS_DIR / f"fold-{j}" / "splits.csv") if r["split"] == "val"}
        assert val == {r["path"] for r in oof if int(r["fold"]) == j}


def test_threshold_is_chosen_on_the_oof_table_and_summary_recorded(kfold_run: Path) -> None:
    card = RunCard.read(kfold_run)
    oof = read_csv(kfold_run / "oof.csv")
    y = np.array([r["label"] == card.classes[1] for r in oof], dtype=int)
    p = np.array([float(r["prob"]) for r in oof])
    assert card.threshold == choose_threshold(y, p, "youden")
    assert card.calibration.split == "oof" and card.calibration.n == len(oof)
    assert card.architecture == "ensemble"
    assert card.model_kwargs == {"member": "cnn-small", "member_kwargs": {"width": 4}, "n": K}
    folds = card.training.folds
    assert folds["k"] == K and folds["oof_n"] == len(oof) and len(folds["per_fold"]) == K
    low, high = folds["oof_auc_ci"]
    assert low <= folds["oof_auc"] <= high
    assert card.calibration.temperature > 0
    from lungxray.serve.card import model_card  # the model card says where the threshold came from

    assert f"out-of-fold predictions of the {len(oof)} training images" in model_card(kfold_run, card)["threshold_note"]


def test_ensemble_output_is_the_mean_of_its_members_logits(kfold_run: Path) -> None:
    model = load_run(kfold_run).model
    x = torch.randn(5, 1, 32, 32)
    members = []
    for j in range(K):
        member = create_model("cnn-small", in_chans=1, num_classes=1, img_size=32, width=4).eval()
        member.load_state_dict(load_file(str(kfold_run / FOLDS_DIR / f"fold-{j}" / "best.safetensors")))
        members.append(member)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in members]).mean(0)
        assert torch.allclose(model(x), expected, atol=1e-6)
        emb = model.forward_head(model.forward_features(x), pre_logits=True)
        assert emb.shape == (5, K * members[0].num_features)
        assert torch.allclose(model.get_classifier()(emb), expected, atol=1e-6)


def test_predict_evaluate_export_and_explain_accept_an_ensemble(kfold_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from lungxray.evaluation.evaluate import evaluate_run
    from lungxray.explain import heatmap
    from lungxray.export import export_onnx
    from lungxray.predict import Predictor

    run = tmp_path / "run"
    shutil.copytree(kfold_run, run, ignore=shutil.ignore_patterns("folds"))
    files = xray_files(2)
    preds = Predictor.load(run).predict_paths(files)
    assert all(p.error is None and 0 <= p.score <= 1 for p in preds)
    body = evaluate_run(run, split="test", progress=False).metrics
    assert body["n"] > 0 and body["threshold"] == RunCard.read(run).threshold
    report = export_onnx(run)
    assert report["ok"], report
    predictor = Predictor.load(run)
    from lungxray.data.imageio import read_image

    h = heatmap(predictor, read_image(files[0]))
    assert h.shape == (32, 32) and np.isfinite(h).all() and h.max() > 0


def test_resume_restarts_at_the_first_unfinished_fold(kfold_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(kfold_run, run)
    for name in ("model.json", "model.safetensors", "oof.csv"):
        (run / name).unlink()
    (run / FOLDS_DIR / "fold-1" / FOLD_DONE).unlink()  # interrupted after training, before its OOF
    shutil.rmtree(run / FOLDS_DIR / "fold-2")  # never started
    done0 = (run / FOLDS_DIR / "fold-0" / FOLD_DONE).stat().st_mtime_ns
    cfg = load_config(run / "config.yaml", {"out": str(run)})
    train(cfg, resume=True, progress=False)
    assert (run / FOLDS_DIR / "fold-0" / FOLD_DONE).stat().st_mtime_ns == done0  # reused, not retrained
    assert (run / "oof.csv").read_text() == (kfold_run / "oof.csv").read_text()  # the same run, bit for bit
    assert RunCard.read(run).threshold == RunCard.read(kfold_run).threshold


def test_calibrate_run_rechooses_an_ensembles_threshold_on_its_oof_table(kfold_run: Path, tmp_path: Path) -> None:
    from lungxray.calibrate import calibrate_run

    card = calibrate_run(kfold_run, strategy="sensitivity>=0.95", out=tmp_path / "s95")
    oof = read_csv(kfold_run / "oof.csv")
    y = np.array([r["label"] == card.classes[1] for r in oof], dtype=int)
    p = np.array([float(r["prob"]) for r in oof])
    assert card.calibration.split == "oof" and card.calibration.strategy == "sensitivity>=0.95"
    assert card.threshold == choose_threshold(y, p, "sensitivity>=0.95")
    assert len(card.calibrations) == 2 and RunCard.read(kfold_run).calibrations == card.calibrations[:1]


def test_an_ensembles_report_draws_each_members_learning_curves(kfold_run: Path, tmp_path: Path) -> None:
    from lungxray.evaluation.evaluate import evaluate_run
    from lungxray.rundir import read_history, write_history

    run = tmp_path / "run"
    shutil.copytree(kfold_run, run)
    assert not (run / "history.csv").exists()  # an ensemble has no history of its own
    for fold in sorted((run / "folds").glob("fold-*")):  # the fixture trains 1 epoch: add a second
        rows = read_history(fold)
        write_history(fold, [*rows, {**rows[0], "epoch": 2}], list(rows[0]))
    res = evaluate_run(run, split="test", progress=False)
    assert (res.out_dir / "figures" / "learning_curves.png").is_file()
    assert "Learning curves" in res.report_path.read_text()



def test_refitting_an_ensembles_ood_follows_training(kfold_run: Path) -> None:
    """adapt_run.refit_ood on the unadapted ensemble gives back training's OOD statistics and its
    shift reference (the last fold's out-of-fold scores, each row scored by the member that held it out)."""
    from lungxray.adapt_run import refit_ood

    loaded = load_run(kfold_run)
    spec, arrays, note = refit_ood(kfold_run, loaded.card, loaded.model)
    assert note == "" and spec.threshold == pytest.approx(loaded.card.ood.threshold, rel=1e-4)
    for key in ("mean", "precision", "ref_distance", "ref_score"):
        np.testing.assert_allclose(np.sort(arrays[key], axis=None), np.sort(loaded.ood[key], axis=None),
                                   rtol=1e-4, atol=1e-5, err_msg=key)  # fmt: skip
