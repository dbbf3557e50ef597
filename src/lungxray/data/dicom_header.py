"""What a DICOM header already says about an input, checked before anyone reads the score.

``header_warnings(source, population)`` reads the header only (no pixels) of a DICOM file or upload
and returns plain-language warnings; a non-DICOM input gives none. Checks:

* ``BodyPartExamined`` present and not chest (CHEST / THORAX / LUNG) -> warn.
* ``ViewPosition`` lateral (LL, RL, LATERAL, LAT, or containing "LAT") -> warn: the model saw
  frontal (PA / AP) films only.
* ``Modality`` present and not CR / DX (e.g. CT, MR, or secondary capture "OT") -> warn.
* ``PatientAge`` (``nnnY`` / ``nnnM`` / ``nnnW`` / ``nnnD``) against the run's ``population`` text:

  - a range "A-B years" (also "A to B years", "A–B y", "ages A-B") -> warn outside [A, B];
  - else the words: "pediatric" / "paediatric" / "child" -> warn at 18 years or older;
    "adult" -> warn under 18;
  - no population text, or nothing parseable in it -> no age check (and no warning).

Missing attributes are not warned about (many exports strip them). The header is read with
``pydicom`` (``stop_before_pixels``); an unreadable header gives no warnings: decoding reports errors.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
CHEST_PARTS = ("CHEST", "THORAX", "LUNG")
FRONTAL_MODALITIES = ("CR", "DX")
ADULT_AGE = 18.0

_RANGE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:-|–|—|to)\s*(\d+(?:\.\d+)?)\s*(?:years?|yrs?|y)\b", re.I)
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])?\s*$", re.I)
_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def is_dicom(source: str | os.PathLike | bytes) -> bool:
    """True when ``source`` (a path or the file's bytes) carries the DICOM preamble, or a DICOM suffix."""
    if isinstance(source, bytes | bytearray):
        return bytes(source[128:132]) == b"DICM"
    path = os.fspath(source)
    if path.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def parse_age(text: Any) -> float | None:
    """DICOM PatientAge ('045Y', '018M', '003W', '010D'; a bare number is years) -> years, or None."""
    m = _AGE.match(str(text or ""))
    if not m:
        return None
    return int(m.group(1)) * _UNIT_YEARS[(m.group(2) or "Y").upper()]


def population_ages(population: str | None) -> tuple[float, float] | None:
    """The age range (years, inclusive) a population text states, by the rule in the module docstring."""
    if not population:
        return None
    m = _RANGE.search(population)
    if m:
        lo, hi = sorted((float(m.group(1)), float(m.group(2))))
        return lo, hi
    words = population.lower()
    if re.search(r"p(a)?ediatric|child", words):
        return 0.0, ADULT_AGE - 1e-9
    if re.search(r"\badults?\b", words):
        return ADULT_AGE, 150.0
    return None


def check_header(ds: Any, population: str | None = None) -> list[str]:
    """Warnings for a pydicom Dataset (or anything with the attributes) against ``population``."""
    out: list[str] = []
    part = str(getattr(ds, "BodyPartExamined", "") or "").strip().upper()
    if part and not any(c in part for c in CHEST_PARTS):
        out.append(f"DICOM BodyPartExamined is {part!r}, not chest: this model reads chest X-rays only")
    view = str(getattr(ds, "ViewPosition", "") or "").strip().upper()
    if view in ("LL", "RL") or "LAT" in view:
        out.append(f"DICOM ViewPosition is {view!r} (lateral): the model was trained on frontal films only")
    modality = str(getattr(ds, "Modality", "") or "").strip().upper()
    if modality and modality not in FRONTAL_MODALITIES:
        out.append(f"DICOM Modality is {modality!r}, not CR/DX radiography: the score does not apply")
    age = parse_age(getattr(ds, "PatientAge", None))
    ages = population_ages(population)
    if age is not None and ages is not None and not ages[0] <= age <= ages[1]:
        out.append(
            f"patient age {age:.3g} years (DICOM PatientAge) is outside the model's intended "
            f"population ({population}): the score may not hold"
        )
    return out


def header_warnings(source: str | os.PathLike | bytes | None, population: str | None = None) -> list[str]:
    """Warnings from the header of a DICOM path or bytes; [] for non-DICOM or unreadable headers."""
    if source is None or not is_dicom(source):
        return []
    try:
        import pydicom

        fp = io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray) else os.fspath(source)
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - a header we cannot read says nothing; decoding reports the error
        return []
    return check_header(ds, population)
