"""`lungxray calibrate RUN --data SITE --adapt-bn`: a site-adapted run (adapt_run.py), end to end.

The session's tiny trained run, a 55-image labeled site folder of official test-split films.
"""

from __future__ import annotations

import copy
import csv
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lungxray.adapt import adapt_batchnorm
from lungxray.calibrate_site import calibrate_site
from lungxray.inference import TorchBackend
from lungxray.predict import Predictor
from lungxray.runcard import RunCard
from test_calibrate_site import _site, flat, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return _site(tmp_path_factory.mktemp("adapt-site") / "site", 25, 30)


@pytest.fixture(scope="module")
def adapted(tiny_run, site, tmp_path_factory):
    """(the original run's files, the calibrate_site result, its new run directory)."""
    before = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()}
    out = tmp_path_factory.mktemp("adapted") / "new"
    res = calibrate_site(tiny_run, site, strategy="youden", out=out, n_boot=50, adapt_bn=True)
    return before, res, out


def test_the_new_run_holds_the_adapted_model_and_the_original_is_untouched(tiny_run, site, adapted):
    before, res, out = adapted
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()} == before
    old, new = load_file(str(tiny_run / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert old.keys() == new.keys()
    stats = [k for k in old if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(old[k], new[k]) for k in stats if "__ood__" not in k)
    for k in old:  # learned weights unchanged
        if k.endswith(("weight", "bias")) and "__ood__" not in k:
            assert torch.equal(old[k], new[k]), k
    assert res.adapted_on == 55 and "AdaBN" in res.card.calibration.notes
    # the new run predicts exactly as the original model adapted to the same 55 images
    pred_old, pred_new = Predictor.load(tiny_run), Predictor.load(out)
    paths = sorted(site.rglob("*.jpeg"))
    images = np.stack([pred_old.preprocess_path(p) for p in paths])
    model = adapt_batchnorm(copy.deepcopy(pred_old.model), images, normalization=res.card.normalization)
    expected, _ = TorchBackend(model, "binary", res.card.preprocessing, torch.device("cpu")).run(images)
    got = pred_new.predict_paths(paths)
    np.testing.assert_allclose([p.score for p in got], expected[:, 0], atol=1e-5)
    assert all((p.label == "PNEUMONIA") == (p.score >= res.card.threshold) for p in got)


def test_the_ood_check_is_refitted_on_the_training_images(tiny_run, adapted):
    _, res, out = adapted
    old_card = RunCard.read(tiny_run)
    assert res.card.ood is not None and "refitted after BatchNorm adaptation to 55 site images" in res.card.ood.fitted_on
    assert res.card.ood.threshold != old_card.ood.threshold
    old, new = load_file(str(tiny_run / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert not torch.equal(old["__ood__.mean"], new["__ood__.mean"])
    assert len(new["__ood__.ref_distance"]) == old_card.calibrations[0].n  # the val split, re-measured
    # NIH adult films are still unlike the training population for the adapted run: the set-level test fires
    from conftest import DATA_ROOT
    from lungxray.calibrate import set_shift
    from lungxray.rundir import load_run

    nih = sorted((DATA_ROOT / "nih_sample" / "images").glob("*.png"))[:20]
    preds = Predictor.load(out).predict_paths(nih)
    shift = set_shift(out, load_run(out), [p.ood_score for p in preds], [p.score for p in preds])
    assert shift.fired and shift.p_value < 1e-4, shift.summary


def test_without_the_training_images_the_adapted_run_has_no_ood_check(tiny_run, site, tmp_path):
    """A site that has the run but not its training data: the adapted run says it has no OOD check."""
    run = tmp_path / "moved"
    shutil.copytree(tiny_run, run)
    rows = list(csv.DictReader((run / "splits.csv").open()))
    with (run / "splits.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "path": r["path"] + ".gone"} if r["split"] == "train" else r for r in rows)
    res = calibrate_site(run, site, strategy="youden", out=tmp_path / "new", n_boot=20, adapt_bn=True)
    assert res.card.ood is None
    assert any("no OOD check on the adapted run" in n and "not all readable" in n for n in res.notes)
    preds = Predictor.load(tmp_path / "new").predict_paths(sorted(site.rglob("*.jpeg"))[:3])
    assert all(p.ood_score is None and p.error is None for p in preds)


def test_cli_adapts_and_says_so_and_refuses_adapt_without_labels(tiny_run, site, tmp_path, capsys):
    code = run_cli(["calibrate", str(tiny_run), "--data", str(site), "--strategy", "youden", "--adapt-bn",
                    "--out", str(tmp_path / "cli"), "--bootstrap", "20", "--quiet"])  # fmt: skip
    text = flat(capsys.readouterr().out)
    assert code == 0 and "adapted (AdaBN) on 55 site images" in text and "new (adapted, in-sample)" in text
    code = run_cli(["calibrate", str(tiny_run), "--adapt-on", str(site), "--out", str(tmp_path / "x")])
    captured = capsys.readouterr()
    assert code != 0 and "need a labeled site sample" in flat(captured.out + captured.err)
    assert "Traceback" not in captured.out + captured.err and not (tmp_path / "x").exists()


def test_refitting_the_unadapted_model_reproduces_what_training_stored(tiny_run):
    """refit_ood follows training's recipe: on the unadapted model it gives back the stored statistics."""
    from lungxray.adapt_run import refit_ood
    from lungxray.rundir import load_run

    loaded = load_run(tiny_run)
    spec, arrays, note = refit_ood(tiny_run, loaded.card, loaded.model)
    assert note == "" and spec.threshold == pytest.approx(loaded.card.ood.threshold, rel=1e-4)
    for key in ("mean", "precision"):
        np.testing.assert_allclose(arrays[key], loaded.ood[key], rtol=1e-4, atol=1e-5)
    for key in ("ref_distance", "ref_score"):
        np.testing.assert_allclose(np.sort(arrays[key]), np.sort(loaded.ood[key]), rtol=1e-4, atol=1e-5)


def test_the_model_card_says_the_weights_were_adapted(tiny_run, adapted):
    from lungxray.serve.card import model_card

    _, res, out = adapted
    assert res.card.calibration.adapted_on == 55 and RunCard.read(out).calibration.adapted_on == 55
    card = model_card(out, RunCard.read(out))
    assert [a["images"] for a in card["site_adaptation"]] == [55]
    assert model_card(tiny_run, RunCard.read(tiny_run))["site_adaptation"] == []


def test_adapt_on_adds_unlabeled_images_and_reports_unreadable_ones(tiny_run, site, tmp_path):
    from conftest import noise_pngs

    extra = tmp_path / "unlabeled"
    extra.mkdir()
    noise_pngs(extra, 10, broken=3)
    res = calibrate_site(tiny_run, site, strategy="youden", out=tmp_path / "new", n_boot=20, adapt_on=extra)
    assert res.adapted_on == 55 + 9 and res.card.calibration.adapted_on == 64
    assert any("1 of the 10 --adapt-on images could not be read" in n for n in res.notes)
