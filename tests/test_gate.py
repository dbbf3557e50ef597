"""Population gate: trained on real films (pediatric Kermany inside, adult NIH outside), attached to a run,
and read by predict (in memory and streamed), evaluate and the model card."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import CHEST_XRAY, DATA_ROOT, gate_sets, require_data, tiny_gate
from lungxray.errors import DataError, RunError
from lungxray.gate import (
    GATE_DIR,
    GATE_STRATEGY,
    INSIDE,
    OUTSIDE,
    Gate,
    attach_gate,
    gate_flagged,
    gate_warning,
)

pytestmark = pytest.mark.usefixtures("one_thread")
NIH = DATA_ROOT / "nih_sample" / "images"


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory, cache_dir) -> Path:
    return tiny_gate(tmp_path_factory.mktemp("gate"), cache_dir)


@pytest.fixture()
def gated_run(tiny_run, gate_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval", GATE_DIR))
    attach_gate(gate_run, run)
    return run


def test_gate_data_leaves_out_the_inside_test_split_and_keeps_sets_apart(gate_run):
    rows = list(csv.DictReader((gate_run / "gate_data.csv").read_text().splitlines()))
    assert {r["label"] for r in rows} == {INSIDE, OUTSIDE}
    assert not [r for r in rows if r["label"] == INSIDE and "/test/" in r["path"]]
    assert len([r for r in rows if r["label"] == INSIDE]) == 60 and len(rows) == 120
    assert all(r["patient"].startswith("in:" if r["label"] == INSIDE else "out0:") for r in rows)


def test_a_gate_is_a_run_with_its_threshold_chosen_for_one_percent_of_the_population(gate_run):
    gate = Gate(gate_run)
    assert list(gate.card.classes) == [INSIDE, OUTSIDE] and gate.card.threshold_strategy == GATE_STRATEGY
    assert gate.card.calibration.split == "val" and 0.0 <= gate.threshold <= 1.0


def test_empty_outside_folder_and_a_classifier_posing_as_gate_are_refused(tmp_path, tiny_run):
    from lungxray.training.gate import gate_rows

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        gate_rows(CHEST_XRAY, [tmp_path / "empty"])
    with pytest.raises(RunError, match="not a population gate"):
        Gate(tiny_run)


def test_attach_copies_the_gate_and_leaves_the_classifier_untouched(tiny_run, gate_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval"))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    record = attach_gate(gate_run, run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert json.loads((run / GATE_DIR / "gate.json").read_text())["sha1"] == record["sha1"]
    assert record["trained_on"].startswith("inside: ") and "outside" in record["trained_on"]
    assert Gate.for_run(run).threshold == Gate(gate_run).threshold
    assert Gate.for_run(tiny_run) is None or (tiny_run / GATE_DIR).is_dir()


def test_a_changed_or_incomplete_gate_copy_is_a_clear_error(gated_run):
    from lungxray.predict import Predictor

    weights = gated_run / GATE_DIR / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(RunError, match="not the gate that was attached"):
        Predictor.load(gated_run)
    (gated_run / GATE_DIR / "gate.json").unlink()
    with pytest.raises(RunError, match="incomplete"):
        Predictor.load(gated_run)


def test_predict_warns_exactly_for_the_films_the_gate_flags(gated_run, tmp_path):
    from lungxray.data.imageio import read_image
    from lungxray.predict import Predictor
    from lungxray.predict_stream import predict_to_csv

    pred = Predictor.load(gated_run)
    files = [*sorted(NIH.glob("*.png"))[100:104], *sorted((CHEST_XRAY / "test" / "NORMAL").glob("*.jpeg"))[:4]]
    p_out = pred.gate.scores([read_image(f) for f in files])
    expected = [p >= pred.gate.threshold for p in p_out]
    rows = pred.predict_paths(files)
    assert [gate_flagged(r.warnings) for r in rows] == expected  # what /metrics counts
    assert all(r.score is not None for r in rows)  # flagged films are still scored
    for threshold, flagged in ((0.0, True), (1.01, False)):  # the same real gate at the two extremes
        pred.gate.threshold = threshold
        assert all(any("population gate" in w for w in r.warnings) == flagged for r in pred.predict_paths(files))
    pred.gate.threshold = 0.0
    predict_to_csv(pred, [str(f) for f in files], tmp_path / "p.csv")  # the streamed path reads the gate too
    out = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert len(out) == len(files) and all("population gate" in r["warnings"] for r in out)
    assert gate_warning(0.9, 0.3).startswith("unlike the population")


def test_streamed_csv_with_workers_flags_the_same_films(gated_run, tmp_path):
    # the gate's input is made in the decoding workers, from the same decoded image as in memory
    from lungxray.predict import Predictor
    from lungxray.predict_stream import predict_to_csv

    pred = Predictor.load(gated_run)
    files = [str(f) for f in (*sorted(NIH.glob("*.png"))[100:106], *sorted((CHEST_XRAY / "test" / "NORMAL").glob("*.jpeg"))[:6])]
    in_memory = [gate_flagged(r.warnings) for r in pred.predict_paths(files)]
    assert any(in_memory) and not all(in_memory)  # a real mix of flagged and unflagged films
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    predict_to_csv(pred, files, a, batch_size=4, workers=0)
    predict_to_csv(pred, files, b, batch_size=4, workers=2, prefetch=2)
    assert a.read_bytes() == b.read_bytes()
    rows = list(csv.DictReader(b.read_text().splitlines()))
    assert [r["path"] for r in rows] == files
    assert ["population gate" in r["warnings"] for r in rows] == in_memory


def test_evaluate_reports_the_flagged_share_and_the_model_card_shows_it(gated_run, tmp_path):
    from lungxray.evaluation.evaluate import evaluate_run
    from lungxray.runcard import RunCard
    from lungxray.serve.card import model_card

    ext = tmp_path / "adults" / "NORMAL"
    ext.mkdir(parents=True)
    for f in sorted(NIH.glob("*.png"))[200:230]:
        (ext / f.name).symlink_to(f)
    res = evaluate_run(gated_run, data=str(tmp_path / "adults"), progress=False, n_boot=20)
    got = res.metrics["population_gate"]
    gate = Gate.for_run(gated_run)
    from lungxray.data.imageio import read_image

    flags = gate.flags(gate.scores([read_image(f) for f in sorted(ext.glob("*.png"))]))
    assert got["n"] == 30 and got["flagged"] == int(flags.sum())
    assert 0.0 <= res.metrics["ood_flagged"] <= 1.0
    assert f"{got['flagged']} of 30" in res.report_path.read_text()  # the report says it too
    card = model_card(gated_run, RunCard.read(gated_run))
    assert card["population_gate"]["sha1"] == got["sha1"]
    (entry,) = [e for e in card["external"] if e["n"] == 30]
    assert entry["gate_flagged"] == pytest.approx(got["share"])


@pytest.mark.slow
def test_a_gate_from_a_few_hundred_films_flags_adult_films_and_spares_the_pediatric_test_split(tmp_path, cache_dir):
    """Real behaviour: 200 Kermany vs 200 NIH films, 64 px, 6 epochs; adult films of other hospitals
    (lung_masks normal films) are mostly flagged, Kermany's own test films mostly not."""
    from lungxray.data.imageio import read_image
    from lungxray.training.gate import train_gate

    inside, outside = gate_sets(tmp_path, 200, 200)
    run = train_gate(inside, [outside], tmp_path / "gate", progress=False,
                     overrides={"data.cache_dir": str(cache_dir), "train.threads": 1})  # fmt: skip
    gate = Gate(run)
    require_data(DATA_ROOT / "lung_masks")
    index = (DATA_ROOT / "lung_masks" / "index.csv").read_text().splitlines()
    rows = [r for r in csv.DictReader(index) if r["finding"] == "normal"]
    adults = [read_image(DATA_ROOT / "lung_masks" / r["image"]) for r in rows[::5]]
    children = [read_image(f) for f in sorted((CHEST_XRAY / "test" / "PNEUMONIA").glob("*.jpeg"))[::10]]
    assert gate.flags(gate.scores(adults)).mean() >= 0.8
    assert gate.flags(gate.scores(children)).mean() <= 0.2
    assert np.isfinite(gate.threshold)
