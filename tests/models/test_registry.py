"""The model name registry: reference and timm names, specs, unknown-name errors, no import circle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lungxray
from lungxray.errors import ModelError
from lungxray.models.factory import create_model
from lungxray.models.registry import list_models, model_spec, registered


def test_list_models_merges_reference_and_timm():
    assert list_models("cnn-*")[:2] == ["cnn-64-elu", "cnn-150-relu"]
    names = list_models("resnet1*")
    assert "resnet18" in names and all(n.startswith("resnet1") for n in names)
    assert "mlp" in list_models() and "densenet121" in list_models()
    assert list_models("no-such-model*") == []


def test_model_spec_for_timm_models():
    spec = model_spec("resnet18")
    assert (spec.family, spec.default_size, spec.default_in_chans, spec.cam_layer) == ("timm", 224, 1, None)
    assert model_spec("inception_v3").default_size == 299
    assert model_spec("cnn-small").family == "reference"


@pytest.mark.parametrize(
    ("wrong", "suggestion"),
    [("resnet19", "resnet18"), ("cnn-smal", "cnn-small"), ("densnet121", "densenet121")],
)
def test_unknown_name_suggests_close_matches(wrong, suggestion):
    with pytest.raises(ModelError, match=f"unknown model '{wrong}'.*'{suggestion}'"):
        create_model(wrong)
    with pytest.raises(ModelError, match=suggestion):
        model_spec(wrong)


def test_registered_knows_reference_models_only():
    spec, constructor = registered("cnn-small")
    assert spec.family == "reference" and callable(constructor)
    assert registered("resnet18") is None and registered("no-such-model") is None


@pytest.mark.parametrize("module", ["registry", "weights", "parts", "factory"])
def test_reference_models_are_registered_whichever_module_is_imported_first(module):
    """A fresh interpreter that imports one models module only still sees the reference models."""
    code = (
        f"import lungxray.models.{module}\n"
        "from lungxray.models.registry import list_models, model_spec\n"
        "assert model_spec('cnn-small').family == 'reference', 'cnn-small not registered'\n"
        "assert list_models('cnn-*')[:2] == ['cnn-64-elu', 'cnn-150-relu'], list_models('cnn-*')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(lungxray.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
