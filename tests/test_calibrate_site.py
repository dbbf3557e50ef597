"""`lungxray calibrate RUN --data SITE` (labeled and --unlabeled), the shift reference and its lazy cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import CHEST_XRAY, require_data  # noqa: E402
from lungxray.calibrate import set_shift, shift_reference
from lungxray.calibrate_site import adapt_prevalence, calibrate_site, fingerprint
from lungxray.cli import main
from lungxray.errors import DataError, RunError
from lungxray.predict import Predictor
from lungxray.runcard import RunCard

pytestmark = pytest.mark.usefixtures("one_thread")


def flat(text: str) -> str:
    return " ".join(text.split())


def run_cli(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _site(root: Path, n_normal: int, n_pneumonia: int) -> Path:
    """A labeled site folder of symlinks to official test-split images (class folders)."""
    require_data()
    for cls, n in (("NORMAL", n_normal), ("PNEUMONIA", n_pneumonia)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for p in sorted((CHEST_XRAY / "test" / cls).glob("*.jpeg"))[:n]:
            os.symlink(p, root / cls / p.name)
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return _site(tmp_path_factory.mktemp("site") / "site", 25, 30)


def test_calibrate_site_round_trip(tiny_run, site, tmp_path):
    before = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()}
    card = RunCard.read(tiny_run)
    out = tmp_path / "new"
    res = calibrate_site(tiny_run, site, strategy="youden", out=out, n_boot=50)
    # the original run is byte-for-byte unchanged; the new one holds one more calibration entry
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()} == before
    new = RunCard.read(out)
    assert new == res.card and len(new.calibrations) == len(card.calibrations) + 1
    cal = new.calibration
    assert cal.split == "site" and cal.strategy == "youden" and cal.name == "site" and cal.created
    assert cal.n == 55 and cal.temperature > 0 and len(cal.fingerprint) == 40
    assert cal.fingerprint == fingerprint([str(p) for p in sorted(site.rglob("*.jpeg"))])
    assert res.comparison["old"]["threshold"] == card.threshold
    assert res.comparison["new"]["threshold"] == cal.threshold
    # predictions of the new run use the new threshold; the old run's the old one
    paths = sorted(site.rglob("*.jpeg"))[:3]
    new_preds = Predictor.load(out).predict_paths(paths)
    old_preds = Predictor.load(tiny_run).predict_paths(paths)
    assert all(p.threshold == pytest.approx(cal.threshold) for p in new_preds)
    assert all(p.threshold == pytest.approx(card.threshold) for p in old_preds)
    for p in new_preds:
        assert (p.label == "PNEUMONIA") == (p.score >= cal.threshold)
    with pytest.raises(RunError, match="already exists"):
        calibrate_site(tiny_run, site, strategy="youden", out=out)


def test_calibrate_site_refuses_a_too_small_sample(tiny_run, tmp_path):
    small = _site(tmp_path / "small", 6, 8)
    with pytest.raises(DataError, match=r"6 negative.*at least 20 positive and 20 negative"):
        calibrate_site(tiny_run, small, strategy="youden", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # sensitivity>=0.95 needs 41 positives
    with pytest.raises(DataError, match="at least 41 positive"):
        calibrate_site(tiny_run, _site(tmp_path / "mid", 25, 30), strategy="sensitivity>=0.95",
                       out=tmp_path / "y")  # fmt: skip


def test_calibrate_cli_prints_old_and_new_operating_points(tiny_run, site, tmp_path, capsys):
    out = tmp_path / "cli-site"
    assert run_cli(["calibrate", str(tiny_run), "--data", str(site), "--strategy", "youden",
                    "--out", str(out), "--bootstrap", "50", "--quiet"]) == 0  # fmt: skip
    text = flat(capsys.readouterr().out)
    assert "old (validation)" in text and "new (site, in-sample)" in text
    assert "sensitivity" in text and "specificity" in text and "original run is unchanged" in text
    assert RunCard.read(out).calibration.split == "site"


def test_calibrate_unlabeled_estimates_prevalence_and_says_what_it_cannot_correct(
    tiny_run, site, tmp_path, capsys
):
    out = tmp_path / "prev"
    res = adapt_prevalence(tiny_run, site, out=out, n_boot=20)
    em = res.prevalence["em"]
    assert 0.0 <= em["low"] <= em["estimate"] <= em["high"] <= 1.0
    assert 0.0 <= res.prevalence["bbse"]["estimate"] <= 1.0
    new = RunCard.read(out)
    assert new.calibration.split == "site-unlabeled" and new.threshold == res.prevalence["threshold_new"]
    # the bias-corrected temperature scaling that EM used is in the card, both of its parameters
    assert new.calibration.bias == pytest.approx(res.prevalence["bias"], abs=1e-6)
    assert new.calibration.temperature == pytest.approx(res.prevalence["temperature"], abs=1e-6)
    assert res.shift is not None and any("not a change in how" in n for n in res.notes)
    assert run_cli(["calibrate", str(tiny_run), "--data", str(site), "--unlabeled",
                    "--out", str(tmp_path / "prev2"), "--quiet"]) == 0  # fmt: skip
    text = flat(capsys.readouterr().out)
    assert "site prevalence (EM" in text and "only a change of prevalence" in text and "shift test" in text


def test_shift_reference_stored_at_training_and_computed_lazily_otherwise(tiny_run, tmp_path):
    from lungxray.rundir import load_run, save_weights

    loaded = load_run(tiny_run)
    assert {"ref_distance", "ref_score"} <= set(loaded.ood)  # the training hook stored it
    stored = shift_reference(tiny_run, loaded)
    assert stored.shape == (RunCard.read(tiny_run).calibration.n, 2)
    old = tmp_path / "old-run"  # a run trained before the hook: no ref_* arrays
    shutil.copytree(tiny_run, old, ignore=shutil.ignore_patterns("checkpoint.pt", "eval", "reference.csv"))
    extra = {k: v for k, v in loaded.ood.items() if not k.startswith("ref_")}
    save_weights(old / "model.safetensors", loaded.model.state_dict(), extra)
    lazy = shift_reference(old)
    assert (old / "reference.csv").is_file()
    np.testing.assert_allclose(lazy, stored, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(shift_reference(old), lazy, rtol=1e-6)  # read back from the cache
    # a sample drawn like the reference does not fire; a constant far-away one does
    rng = np.random.default_rng(0)
    far = set_shift(old, None, stored[:, 0] * 3 + 10, rng.random(len(stored)))
    assert far.fired


def test_evaluate_data_ends_with_the_shift_line(tiny_run, site, capsys):
    assert run_cli(["evaluate", str(tiny_run), "--data", str(site), "--bootstrap", "20", "--quiet"]) == 0
    text = flat(capsys.readouterr().out)
    assert "set-level shift test" in text and "p =" in text
    report = (tiny_run / "eval" / "site-all" / "report.html").read_text()
    assert "Does this set differ from the training data?" in report
