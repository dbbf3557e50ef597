"""Config: defaults, YAML round trip, dotted overrides with type coercion, and option validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from lungxray.config import (
    Config,
    apply_overrides,
    load_config,
    parse_threshold_strategy,
    save_config,
    to_dict,
)
from lungxray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_run_dir():
    cfg = Config().validate()
    assert cfg.model.name == "cnn-small"
    assert cfg.augment.hflip == 0.0  # the heart is on the left: no flips by default
    assert cfg.run_dir == Path("runs") / "run"
    assert apply_overrides(cfg, {"out": "/tmp/x"}).run_dir == Path("/tmp/x")


def test_yaml_round_trip(tmp_path):
    cfg = load_config(
        None,
        {
            "name": "rt",
            "data.path": "/data/x",
            "data.csv": "labels.csv",
            "train.lr": 3e-4,
            "train.ema": 0.999,
            "train.grad_clip": None,
            "model.kwargs": {"width": 24},
            "eval.threshold": "sensitivity>=0.9",
        },
    )
    save_config(cfg, tmp_path / "config.yaml")
    back = load_config(tmp_path / "config.yaml")
    assert back == cfg
    assert to_dict(back) == to_dict(cfg)
    # the file is plain YAML: every section present, readable without lungxray
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert set(raw) == {f.name for f in dataclasses.fields(Config)}
    assert raw["model"]["kwargs"] == {"width": 24}


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("train.lr", "1e-3", 1e-3),
        ("train.amp", "true", True),
        ("train.amp", "off", False),
        ("train.epochs", "12", 12),
        ("train.epochs", 3.0, 3),
        ("train.ema", "0.99", 0.99),
        ("data.size", "96", 96),
        ("model.freeze_epochs", "2", 2),
    ],
)
def test_overrides_coerce_types(key, text, expected):
    cfg = load_config(None, {key: text})
    section, field = key.split(".")
    value = getattr(getattr(cfg, section), field)
    assert value == expected
    assert type(value) is type(expected)


def test_override_none_keeps_value_and_later_layers_win(tmp_path):
    (tmp_path / "r.yaml").write_text("train:\n  lr: 0.01\n  epochs: 5\ndata:\n  size: 96\n")
    cfg = load_config(tmp_path / "r.yaml", {"train.lr": "0.05", "train.epochs": None})
    assert cfg.train.lr == 0.05  # CLI beats YAML
    assert cfg.train.epochs == 5  # None means "flag not given"
    assert cfg.data.size == 96  # YAML beats defaults
    assert cfg.train.batch_size == Config().train.batch_size


@pytest.mark.parametrize(
    "overrides, suggestion",
    [
        ({"train.lrr": 0.1}, "'lr'"),
        ({"trian.lr": 0.1}, "unknown config key"),
        ({"data.szie": 64}, "'size'"),
    ],
)
def test_unknown_override_key_suggests(overrides, suggestion):
    with pytest.raises(ConfigError, match=suggestion):
        load_config(None, overrides)


def test_unknown_yaml_key_suggests(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  optimiser: adam\n")
    with pytest.raises(ConfigError, match="Did you mean 'optimizer'"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"train.optimizer": "adamx"}, "Did you mean 'adam"),
        ({"train.schedule": "cosin"}, "Did you mean 'cosine'"),
        ({"train.balance": "sampling"}, "'sampler'"),
        ({"model.transfer": "frozen"}, "'freeze'"),
        ({"eval.threshold": "sensitivity>=1.5"}, r"\(0, 1\]"),
        ({"eval.threshold": "specificity>=abc"}, r"\(0, 1\]"),
        ({"eval.threshold": "younden"}, "'youden'"),
        ({"data.resize": "crop"}, "stretch"),
        ({"data.task": "multi-label"}, "'multilabel'"),
        ({"train.monitor": "val_auc"}, "'auc'"),
        ({"data.val_fraction": 1.5}, "data.val_fraction"),
        ({"train.label_smoothing": 0.7}, "train.label_smoothing"),
        ({"train.epochs": 0}, "train.epochs"),
        ({"train.lr": -1}, "train.lr"),
        ({"train.epochs": "many"}, "cannot read 'many' as int"),
        ({"train.amp": "maybe"}, "cannot read 'maybe' as bool"),
        ({"train.epochs": 2.5}, "as int"),
        ({"model.kwargs": 3}, "must be a mapping"),
    ],
)
def test_bad_values_raise_config_error(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match="train. must be a mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.5", ("0.5", None)),
        ("youden", ("youden", None)),
        ("max-f1", ("max-f1", None)),
        (" youden ", ("youden", None)),
        ("sensitivity>=0.95", ("sensitivity", 0.95)),
        ("specificity>=0.9", ("specificity", 0.9)),
        ("sensitivity>=1", ("sensitivity", 1.0)),
    ],
)
def test_parse_threshold_strategy(text, expected):
    assert parse_threshold_strategy(text) == expected


@pytest.mark.parametrize("text", ["sensitivity>=0", "sensitivity>=1.5", "specificity>=", "f1", "0.6"])
def test_parse_threshold_strategy_rejects(text):
    with pytest.raises(ConfigError):
        parse_threshold_strategy(text)


# ------------------------------------------------------------------------------ published recipes
RECIPES = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("space"))


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    for expected in (
        "cnn-64-elu.yaml",
        "cnn-150-relu.yaml",
        "cnn-2x2-stride.yaml",
        "cnn-224-small.yaml",
        "mlp.yaml",
        "resnet18-224.yaml",
        "densenet121-224.yaml",
        "efficientnet-lite0-transfer.yaml",
        "nih-multilabel.yaml",
    ):
        assert expected in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_validates_and_names_a_known_model(path):
    from lungxray.models.registry import model_spec

    text = path.read_text()
    assert text.startswith("#"), f"{path.name} must begin with a comment citing its source"
    cfg = load_config(path)
    spec = model_spec(cfg.model.name)  # ModelError if the name is unknown
    assert spec.name == cfg.model.name
    assert cfg.data.size >= 32
    if spec.family == "reference" and path.stem == cfg.model.name:
        assert cfg.data.size == spec.default_size  # a reference recipe uses its paper's input side


def test_ensemble_tta_and_mixup_fields_are_validated() -> None:
    from lungxray.config import load_config
    from lungxray.errors import ConfigError

    cfg = load_config(None, {"train.folds": 5, "eval.tta": 3, "train.mixup": 0.4})
    assert (cfg.train.folds, cfg.eval.tta, cfg.train.mixup) == (5, 3, 0.4)
    for key, value in (("eval.tta", 8), ("train.mixup", -0.1), ("train.folds", -1)):
        with pytest.raises(ConfigError, match=key):
            load_config(None, {key: value})
