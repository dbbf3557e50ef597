"""DICOM header checks: lateral views, non-radiography modalities, other body parts, ages outside the
run's intended population; carried on ``Prediction.warnings``."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import dicom_bytes, make_random_run  # noqa: E402
from lungxray.data.dicom_header import check_header, header_warnings, parse_age, population_ages
from lungxray.predict import Predictor
from lungxray.runcard import RunCard

PEDIATRIC = "pediatric, 1-5 years, one hospital in Guangzhou"


def _dicom(**attrs) -> bytes:
    import pydicom

    raw = dicom_bytes((np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16))
    ds = pydicom.dcmread(io.BytesIO(raw))
    for k, v in attrs.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_parse_age_and_population_rules():
    assert parse_age("045Y") == 45 and parse_age("018M") == pytest.approx(1.5)
    assert parse_age("") is None and parse_age("abc") is None
    assert population_ages(PEDIATRIC) == (1.0, 5.0)
    assert population_ages("ages 2 to 12 years") == (2.0, 12.0)
    assert population_ages("paediatric") == (0.0, pytest.approx(18.0))
    assert population_ages("adults, NIH clinical center")[0] == 18.0
    assert population_ages("one hospital") is None and population_ages(None) is None


def test_check_header_warnings():
    ok = SimpleNamespace(BodyPartExamined="CHEST", ViewPosition="PA", Modality="DX", PatientAge="003Y")
    assert check_header(ok, PEDIATRIC) == []
    lateral = SimpleNamespace(ViewPosition="LL", Modality="CR")
    assert any("lateral" in w for w in check_header(lateral))
    ct = SimpleNamespace(Modality="CT", BodyPartExamined="ABDOMEN")
    assert len(check_header(ct)) == 2
    adult = SimpleNamespace(PatientAge="045Y")
    (w,) = check_header(adult, PEDIATRIC)
    assert "45 years" in w and "outside" in w
    assert check_header(adult, None) == [] and check_header(adult, "adult") == []


def test_a_lateral_or_adult_dicom_is_warned_about_in_predictions(tmp_path):
    run = make_random_run(tmp_path / "run")
    card = RunCard.read(run)
    replace(card, population=PEDIATRIC).write(run)
    lateral = tmp_path / "lateral.dcm"
    lateral.write_bytes(_dicom(ViewPosition="LL", PatientAge="003Y"))
    adult = tmp_path / "adult.dcm"
    adult.write_bytes(_dicom(ViewPosition="PA", PatientAge="045Y", BodyPartExamined="CHEST"))
    fine = tmp_path / "fine.dcm"
    fine.write_bytes(_dicom(ViewPosition="AP", PatientAge="002Y"))
    pred = Predictor.load(run)
    rows = {p.path: p for p in pred.predict_paths([lateral, adult, fine])}
    assert any("lateral" in w for w in rows[str(lateral)].warnings)
    assert any("45 years" in w for w in rows[str(adult)].warnings)
    assert rows[str(fine)].warnings == [] and rows[str(fine)].error is None
    up = pred.predict_bytes(adult.read_bytes(), name="upload.dcm")  # uploads are checked too
    assert any("outside the model's intended population" in w for w in up.warnings)
    assert json.loads(json.dumps(up.to_dict()))["warnings"] == up.warnings
    assert header_warnings(b"not a dicom") == [] and header_warnings(tmp_path / "missing.png") == []


def test_predict_cli_prints_dicom_warnings(tmp_path, capsys):
    from lungxray.cli import main

    run = make_random_run(tmp_path / "run")
    lateral = tmp_path / "lateral.dcm"
    lateral.write_bytes(_dicom(ViewPosition="LATERAL"))
    try:
        main(["predict", str(run), str(lateral)])
    except SystemExit as exc:
        assert not exc.code
    out = " ".join(capsys.readouterr().out.split())
    assert "lateral.dcm: DICOM ViewPosition is 'LATERAL' (lateral)" in out
