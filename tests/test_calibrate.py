"""The calibrate stage: thresholds, OOD fit, temperature, and ``calibrate_run`` on a finished run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lungxray.calibrate import calibrate_run, choose_thresholds, fit_ood, fit_temperature
from lungxray.errors import RunError
from lungxray.runcard import RunCard

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ pure functions
def test_choose_thresholds_per_task():
    y = np.array([0, 0, 1, 1, 1])
    prob = np.array([[0.1], [0.4], [0.35], [0.8], [0.9]])
    t, ts = choose_thresholds("binary", y, prob, "youden")
    assert ts is None and t == pytest.approx(0.8)  # TPR - FPR = 2/3 at 0.8 (and at 0.35: ties go high)
    assert choose_thresholds("binary", y, prob, "0.5") == (0.5, None)
    assert choose_thresholds("multiclass", np.array([0, 1, 2]), np.eye(3), "youden") == (None, None)
    nan = np.nan
    ym = np.array([[0, 1, 1], [1, 1, nan], [0, 1, 0], [1, 1, nan]])
    pm = np.array([[0.2, 0.9, 0.7], [0.6, 0.8, 0.1], [0.3, 0.7, 0.2], [0.9, 0.6, 0.5]])
    t, ts = choose_thresholds("multilabel", ym, pm, "youden")
    # label 0 separable at 0.6; label 1 one class only -> 0.5; label 2 known rows 0 and 2 -> 0.7
    assert t is None and ts == pytest.approx((0.6, 0.5, 0.7))


def test_fit_ood_threshold_is_the_validation_quantile():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 4)).astype(np.float32)
    val = rng.normal(size=(200, 4)).astype(np.float32)
    fitted = fit_ood(train, val, quantile=0.9)
    assert fitted.ood.dim == 4 and fitted.ood.quantile == 0.9 and fitted.ood.method == "mahalanobis"
    assert fitted.ood_arrays["mean"].shape == (4,) and fitted.ood_arrays["precision"].shape == (4, 4)
    from lungxray.ood import mahalanobis

    d = mahalanobis(val, fitted.ood_arrays["mean"], fitted.ood_arrays["precision"])
    assert np.mean(d <= fitted.ood.threshold) == pytest.approx(0.9, abs=0.01)
    far = mahalanobis(val + 10, fitted.ood_arrays["mean"], fitted.ood_arrays["precision"])
    assert (far > fitted.ood.threshold).all()


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    """Labels drawn from sigmoid(z); the model reports z * true_t -> the fitted T is about true_t."""
    rng = np.random.default_rng(1)
    z = rng.normal(scale=2.0, size=20000)
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    assert fit_temperature(z * true_t, y) == pytest.approx(true_t, rel=0.08)


def test_fit_temperature_multiclass_and_multilabel():
    rng = np.random.default_rng(2)
    z = rng.normal(scale=2.0, size=(20000, 3))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert fit_temperature(z * 2.0, y, "multiclass") == pytest.approx(2.0, rel=0.08)
    ym = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    ym[::7, 1] = np.nan  # unknown labels are masked
    assert fit_temperature(z * 0.5, ym, "multilabel") == pytest.approx(0.5, rel=0.08)


# ------------------------------------------------------------------------------ calibrate_run
def test_calibrate_run_with_the_training_strategy_reproduces_training(tiny_run, tmp_path):
    """Same val rows (splits.csv through the cache), same weights, same strategy -> the same threshold."""
    before = (tiny_run / "model.json").read_bytes()
    card = RunCard.read(tiny_run)
    new = calibrate_run(tiny_run, out=tmp_path / "same")
    assert (tiny_run / "model.json").read_bytes() == before  # the original run is untouched
    assert len(new.calibrations) == 2 and new.calibrations[0] == card.calibrations[0]
    assert new.calibration.strategy == card.calibration.strategy and new.calibration.split == "val"
    assert new.calibration.n == card.calibration.n
    assert new.threshold == card.threshold
    assert RunCard.read(tmp_path / "same") == new


def test_calibrate_run_appends_a_new_strategy_and_keeps_the_original(tiny_run, tmp_path):
    card = RunCard.read(tiny_run)
    out = tmp_path / "s95"
    new = calibrate_run(tiny_run, strategy="sensitivity>=0.95", out=out)
    assert [c.strategy for c in new.calibrations] == [card.calibration.strategy, "sensitivity>=0.95"]
    assert new.calibrations[0] == card.calibrations[0]  # training's entry preserved as it was
    assert new.calibration.name == "recalibration" and new.calibration.created
    assert new.threshold == new.calibration.threshold and 0.0 <= new.threshold <= 1.0
    assert new.ood == card.ood  # the OOD statistics stay as training fitted them
    # the copy is a complete run (weights identical) without the resume checkpoint
    assert (out / "model.safetensors").read_bytes() == (tiny_run / "model.safetensors").read_bytes()
    assert (out / "splits.csv").is_file() and not (out / "checkpoint.pt").exists()
    assert RunCard.read(tiny_run) == card
    # decisions follow the new operating point
    p = np.array([[new.threshold]])
    assert new.decide(p)[0] == 1 and new.decide(p - 1e-6)[0] == 0
    with pytest.raises(RunError, match="already exists"):
        calibrate_run(tiny_run, strategy="max-f1", out=out)


def test_calibrate_run_in_place_appends_to_the_history(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    first = RunCard.read(run).calibrations
    calibrate_run(run, strategy="max-f1")
    calibrate_run(run, strategy="0.5")
    card = RunCard.read(run)
    assert card.calibrations[:1] == first
    assert [c.strategy for c in card.calibrations[1:]] == ["max-f1", "0.5"]
    assert card.threshold == 0.5


def test_calibrate_run_needs_a_finished_run(tmp_path):
    with pytest.raises(RunError, match="not a run directory"):
        calibrate_run(tmp_path / "nothing", strategy="youden")
