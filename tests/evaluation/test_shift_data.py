"""The drift check on real images: a stream of adult NIH films served to a chest_xray model fires; a
stream of unseen chest_xray films stays quiet (issue 15, Done-when). Uses the session's ``tiny_run``."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from lungxray.evaluation.shift import DriftMonitor


def _features(run, paths) -> np.ndarray:
    """(N, 2) (ood_distance, score) of the readable images among ``paths``."""
    from lungxray.predict import Predictor

    rows = [r for r in Predictor.load(run).predict_paths([str(p) for p in paths]) if r.error is None]
    return np.array([(r.ood_score, r.score) for r in rows], dtype=np.float64)


def test_drift_fires_on_nih_stream_and_stays_quiet_on_chest_xray(tiny_run, data_root, one_thread):
    nih = sorted((data_root / "nih_sample" / "images").glob("*.png"))
    if not nih:
        pytest.skip("nih_sample not in the shared data")
    with open(tiny_run / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    used = {r["path"] for r in rows}
    reference = _features(tiny_run, [r["path"] for r in rows if r["split"] == "val"])
    if np.isnan(reference).any():
        pytest.skip("the tiny run has no OOD statistics")
    # unseen films from the same folders as the training data, in random arrival order
    unseen = [p for p in sorted((data_root / "chest_xray" / "train").rglob("*.jpeg")) if str(p) not in used]
    rng = np.random.default_rng(0)
    quiet_stream = _features(tiny_run, rng.choice(unseen, 40, replace=False))
    loud_stream = _features(tiny_run, rng.choice(nih, 40, replace=False))

    quiet = DriftMonitor(reference, window=40, min_samples=30)
    loud = DriftMonitor(reference, window=40, min_samples=30)
    for d, s in quiet_stream:
        quiet.update(d, s)
    for d, s in loud_stream:
        loud.update(d, s)
    print(quiet.check().summary)
    assert not quiet.check().fired, quiet.check().summary
    result = loud.check()
    print(result.summary)
    assert result.fired and result.p_value < 1e-3, result.summary
