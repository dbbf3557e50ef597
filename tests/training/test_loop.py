"""The training loop (Trainer) on tiny subsets of the real data: run directories, transfer, balance,
bad input, CUDA fast paths on CPU, speed.

Every training here is seconds long: tens of images at 32-64 px, one or two epochs, one thread.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from helpers_training import (  # noqa: E402
    COVID,
    NIH,
    RUN_FILES,
    _copy_images,
    assert_same_weights,
    fit,
    head_names,
    make_cfg,
    read_csv,
    splits_val_rows,
    weights_of,
)
from safetensors.torch import save_file

from conftest import CHEST_XRAY, require_data  # noqa: E402
from lungxray.config import load_config
from lungxray.errors import DataError, ModelError, RunError
from lungxray.inference import DEFAULT_NORMALIZATION, predict_batches, to_input
from lungxray.models.factory import create_model
from lungxray.models.registry import model_spec
from lungxray.runcard import RunCard
from lungxray.rundir import OOD_PREFIX, load_run, read_history
from lungxray.training import (
    Trainer,
    prepare_data,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ every reference model
# (name, input side): each model at its own published side, except cnn-small (128 px) at 32 px.
# Batch 32 over ~45 train images = 2 steps: also covers the one-cycle schedule on a very short run.
REFERENCE = [
    ("cnn-64-elu", 64),
    ("cnn-150-relu", 150),
    ("cnn-2x2-stride", 256),
    ("cnn-224-small", 224),
    ("mlp", 128),
    ("cnn-small", 32),
]


@pytest.mark.parametrize("name, size", REFERENCE, ids=[n for n, _ in REFERENCE])
def test_reference_model_trains_and_run_dir_rebuilds(tmp_path, cache_dir, name, size):
    cfg = make_cfg(
        tmp_path / name, cache_dir, **{"model.name": name, "data.size": size, "train.batch_size": 32}
    )
    cfg.model.kwargs = {}
    trainer, result = fit(cfg)
    run = tmp_path / name
    for f in RUN_FILES:
        assert (run / f).is_file(), f
    assert (run / "figures" / "learning_curves.png").is_file()
    assert result.epochs_run == 1 and result.best_epoch == 1

    # config.yaml reproduces the config; splits.csv lists every image once; one history row
    assert load_config(run / "config.yaml") == cfg
    splits = read_csv(run / "splits.csv")
    m = trainer.m
    assert len(splits) == len(m) and {r["split"] for r in splits} == {"train", "val", "test"}
    assert sorted(r["path"] for r in splits) == sorted(m.paths)
    hist = read_history(run)
    assert len(hist) == 1 and math.isfinite(hist[0]["train_loss"])

    card = RunCard.read(run)
    assert card.architecture == name and card.input_size == size
    assert card.task == "binary" and card.classes == ("NORMAL", "PNEUMONIA")
    assert card.positive_class == "PNEUMONIA" and 0.0 <= card.threshold <= 1.0
    assert card.calibration.split == "val" and card.calibration.n == len(splits_val_rows(run))
    assert card.in_chans == model_spec(name).default_in_chans
    assert card.normalization == DEFAULT_NORMALIZATION
    assert card.training.epochs_run == 1 and "decision support" in card.disclaimer.lower()

    loaded = load_run(run)
    assert loaded.ood["mean"].shape == (card.ood.dim,)
    images = trainer.data.images[trainer.val_idx]
    x = to_input(images, DEFAULT_NORMALIZATION, torch.device("cpu"), card.in_chans)
    trained = trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), trained(x))
    prob, _ = predict_batches(
        loaded.model, images, task="binary", normalization=DEFAULT_NORMALIZATION,
        device=torch.device("cpu"), in_chans=card.in_chans,
    )  # fmt: skip
    assert prob.shape == (len(images), 1) and ((prob >= 0) & (prob <= 1)).all()


def test_multiclass_covid19_with_sampler_and_label_smoothing(tmp_path, cache_dir):
    cfg = make_cfg(
        tmp_path / "covid",
        cache_dir,
        COVID,
        **{"train.balance": "sampler", "train.label_smoothing": 0.1, "data.max_images": 80},
    )
    trainer, result = fit(cfg)
    card = RunCard.read(tmp_path / "covid")
    assert card.task == "multiclass"
    assert card.classes == ("Normal", "Covid", "Viral Pneumonia")  # normal-like first
    assert card.threshold is None and card.thresholds is None
    assert card.calibration.threshold is None and card.calibration.thresholds is None
    loaded = load_run(tmp_path / "covid")
    prob, _ = predict_batches(
        loaded.model, trainer.data.images[:10], task="multiclass",
        normalization=DEFAULT_NORMALIZATION, device=torch.device("cpu"),
    )  # fmt: skip
    assert prob.shape == (10, 3)
    np.testing.assert_allclose(prob.sum(1), 1.0, atol=1e-5)
    assert math.isfinite(result.history[0]["train_loss"])


def test_multilabel_nih_thresholds_per_label(tmp_path, cache_dir):
    cfg = make_cfg(tmp_path / "nih", cache_dir, NIH, **{"data.csv": "labels.csv", "data.max_images": 150})
    trainer, _ = fit(cfg)
    card = RunCard.read(tmp_path / "nih")
    assert card.task == "multilabel"
    assert "No Finding" not in card.classes and len(card.classes) >= 5
    assert len(card.calibration.thresholds) == len(card.classes)
    assert all(0.0 <= t <= 1.0 for t in card.thresholds)
    assert card.threshold is None and card.calibration.threshold is None
    loaded = load_run(tmp_path / "nih")
    assert loaded.model.get_classifier().out_features == len(card.classes)
    # splits grouped by patient: no NIH patient in two splits
    rows = read_csv(tmp_path / "nih" / "splits.csv")
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())



# ------------------------------------------------------------------------------ transfer learning
def test_freeze_trains_only_the_head(tmp_path, cache_dir, tiny_run):
    before = {k: v for k, v in weights_of(tiny_run).items() if not k.startswith(OOD_PREFIX)}
    cfg = make_cfg(
        tmp_path / "frozen",
        cache_dir,
        **{"model.weights": str(tiny_run), "model.transfer": "freeze", "model.kwargs": {}},
    )
    trainer, _ = fit(cfg)
    assert trainer.model.weights_report["loaded"] == sum(
        not k.endswith("num_batches_tracked") for k in before
    )
    after = {k: v for k, v in weights_of(tmp_path / "frozen").items() if not k.startswith(OOD_PREFIX)}
    head = head_names(trainer.model)
    assert head == {"classifier.weight", "classifier.bias"}
    for k in before:
        if k in head:
            assert not torch.equal(before[k], after[k]), f"head tensor {k} did not train"
        else:  # convolutions and BatchNorm statistics alike stay as loaded
            assert torch.equal(before[k], after[k]), f"frozen tensor {k} changed"


def test_pretrain_on_nih_then_finetune_on_chest_xray(tmp_path, cache_dir):
    """The issue's example: a multilabel NIH run (14-way head) seeds a binary chest_xray run (1 logit)."""
    nih = tmp_path / "nih"
    fit(make_cfg(nih, cache_dir, NIH, **{"data.csv": "labels.csv", "data.max_images": 150}))
    source = {k: v for k, v in weights_of(nih).items() if not k.startswith(OOD_PREFIX)}
    assert source["classifier.weight"].shape[0] > 1

    trainer, _ = fit(make_cfg(tmp_path / "chest", cache_dir, **{"model.weights": str(nih)}))
    report = trainer.model.weights_report
    assert report["skipped"] == ["classifier.weight", "classifier.bias"]  # the NIH head does not fit
    assert report["loaded"] == sum(
        not k.endswith("num_batches_tracked") and not k.startswith("classifier.") for k in source
    )
    assert load_run(tmp_path / "chest").model.get_classifier().out_features == 1


def test_freeze_then_finetune_unfreezes_after_freeze_epochs(tmp_path, cache_dir, tiny_run):
    start = {k: v for k, v in weights_of(tiny_run).items() if not k.startswith(OOD_PREFIX)}
    cfg = make_cfg(
        tmp_path / "staged",
        cache_dir,
        **{
            "model.weights": str(tiny_run),
            "model.transfer": "freeze-then-finetune",
            "model.freeze_epochs": 1,
            "model.kwargs": {},
            "train.epochs": 2,
            "train.lr": 1e-2,
        },
    )
    trainer = Trainer(cfg, prepare_data(cfg, progress=False), progress=False)
    seen: list[tuple[bool, dict[str, torch.Tensor]]] = []

    def snapshot(epoch, scores):
        seen.append((trainer.frozen, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}))

    trainer.fit(on_epoch=snapshot)
    assert [frozen for frozen, _ in seen] == [True, False]
    head = head_names(trainer.model)
    backbone = [k for k in start if k not in head and not k.endswith("num_batches_tracked")]
    epoch1, epoch2 = seen[0][1], seen[1][1]
    assert all(torch.equal(epoch1[k], start[k]) for k in backbone)
    assert any(not torch.equal(epoch1[k], start[k]) for k in head)
    changed = [k for k in backbone if not torch.equal(epoch2[k], start[k])]
    assert "features.stage1.conv1.conv.weight" in changed and len(changed) == len(backbone)
    hist = read_history(tmp_path / "staged")
    assert hist[1]["lr"] <= cfg.train.lr * cfg.model.finetune_lr_scale + 1e-12


# ------------------------------------------------------------------------------ balance and loss
def test_sampler_balances_classes(tmp_path, cache_dir):
    cfg = make_cfg(tmp_path / "s", cache_dir, **{"train.balance": "sampler"})
    trainer = Trainer(cfg, prepare_data(cfg, progress=False), progress=False)
    y = trainer.m.targets
    natural = float(np.mean(y[trainer.train_idx] == 0))
    assert natural < 0.35  # Kermany train is about 1 normal in 4
    g = torch.Generator().manual_seed(0)
    drawn = np.concatenate([trainer._epoch_order(g) for _ in range(20)])
    assert set(drawn) <= set(trainer.train_idx)
    assert 0.42 < float(np.mean(y[drawn] == 0)) < 0.58

    cfg.train.balance = "none"
    plain = Trainer(cfg, trainer.data, progress=False)._epoch_order(torch.Generator().manual_seed(0))
    assert sorted(plain) == sorted(trainer.train_idx)  # a permutation, each image once



# ------------------------------------------------------------------------------ no test-set leakage
def test_threshold_and_weights_ignore_test_labels(tmp_path, cache_dir):
    """Swapping the TEST folder's labels changes nothing that training chose (weights, threshold)."""
    require_data()
    runs = []
    for swap in (False, True):
        root = tmp_path / ("swapped" if swap else "plain")
        for cls in ("NORMAL", "PNEUMONIA"):
            _copy_images(CHEST_XRAY / "train" / cls, root / "train" / cls, 30)
        # imbalanced test set (15 vs 5), so a swap also changes the test class proportions
        test_dirs = (
            {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}
            if swap
            else {"NORMAL": "NORMAL", "PNEUMONIA": "PNEUMONIA"}
        )
        _copy_images(CHEST_XRAY / "test" / "NORMAL", root / "test" / test_dirs["NORMAL"], 15)
        _copy_images(CHEST_XRAY / "test" / "PNEUMONIA", root / "test" / test_dirs["PNEUMONIA"], 5)
        out = tmp_path / f"run-{root.name}"
        cfg = make_cfg(out, cache_dir, root, **{"data.max_images": None, "train.epochs": 2})
        trainer, _ = fit(cfg)
        assert trainer.m.class_counts("test") == (
            {"NORMAL": 5, "PNEUMONIA": 15} if swap else {"NORMAL": 15, "PNEUMONIA": 5}
        )
        runs.append(out)
    a, b = (RunCard.read(r) for r in runs)
    assert a.threshold == b.threshold
    assert a.ood.threshold == b.ood.threshold
    assert_same_weights(weights_of(runs[0]), weights_of(runs[1]))
    assert a.training.counts["val"] == b.training.counts["val"]



# ------------------------------------------------------------------------------ bad input
def test_unknown_model_name(tmp_path, cache_dir):
    cfg = make_cfg(tmp_path / "r", cache_dir, **{"model.name": "resnet-18x", "model.kwargs": {}})
    with pytest.raises(ModelError, match="unknown model 'resnet-18x'"):
        fit(cfg)


def test_one_class_data_set(tmp_path, cache_dir):
    require_data()
    _copy_images(CHEST_XRAY / "train" / "NORMAL", tmp_path / "one" / "NORMAL", 12)
    cfg = make_cfg(tmp_path / "r", cache_dir, tmp_path / "one")
    with pytest.raises(DataError, match="class"):
        train(cfg, progress=False)
    assert not (tmp_path / "r" / "model.json").exists()


def test_empty_validation_split(tmp_path, cache_dir):
    cfg = make_cfg(tmp_path / "r", cache_dir, **{"data.val_fraction": 0.0})
    with pytest.raises(DataError, match="val split .* is empty"):
        prepare_data(cfg, progress=False)


def test_missing_label_column(tmp_path, cache_dir):
    cfg = make_cfg(
        tmp_path / "r", cache_dir, NIH, **{"data.csv": "labels.csv", "data.label_col": "Diagnosis"}
    )
    with pytest.raises(DataError, match="Diagnosis") as info:
        train(cfg, progress=False)
    assert "Finding Labels" in str(info.value)  # the message lists the columns there are


def test_weights_that_cannot_be_adapted(tmp_path, cache_dir):
    state = create_model("cnn-small", width=8).state_dict()
    key = "features.stage2.conv1.conv.weight"
    state[key] = torch.zeros(5, 3, 3, 3)  # another layout: neither the same shape nor an RGB stem
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    cfg = make_cfg(tmp_path / "r", cache_dir, **{"model.weights": str(tmp_path / "bad.safetensors")})
    with pytest.raises(ModelError, match="stage2.conv1.conv.weight"):
        fit(cfg)


def test_resume_without_checkpoint(tmp_path, cache_dir):
    cfg = make_cfg(tmp_path / "fresh", cache_dir)
    with pytest.raises(RunError, match=r"checkpoint\.pt does not exist"):
        fit(cfg, resume=True)


def test_training_into_a_finished_run_is_refused(tmp_path, cache_dir, tiny_run):
    stamp = (tiny_run / "model.json").stat().st_mtime_ns
    cfg = make_cfg(tiny_run, cache_dir)
    with pytest.raises(RunError, match="already holds a finished run"):
        train(cfg, progress=False)
    assert (tiny_run / "model.json").stat().st_mtime_ns == stamp


# ------------------------------------------------------------------------------ CUDA fast paths, on CPU
# bf16 autocast and channels-last memory run only on CUDA. Adding "cpu" to FAST_PATH_DEVICES runs the
# very same code paths here, so a dtype or memory-format slip shows up without a GPU.
@pytest.fixture
def fast_paths_on_cpu(monkeypatch):
    import lungxray.inference

    monkeypatch.setattr(lungxray.inference, "FAST_PATH_DEVICES", ("cuda", "cpu"))


@pytest.fixture
def output_dtypes():
    """dtypes of every Conv2d / Linear output while the test runs (a global forward hook)."""
    seen: set[torch.dtype] = set()

    def hook(module, args, output):
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield seen
    handle.remove()


FAST_PATH_CASES = {
    "binary-resnet18": (CHEST_XRAY, {"model.name": "resnet18", "model.kwargs": {}}),
    "multiclass-cnn-small": (COVID, {"data.max_images": 80}),
    "multilabel-cnn-small-ema": (NIH, {"data.csv": "labels.csv", "data.max_images": 150, "train.ema": 0.9}),
}


@pytest.mark.parametrize("case", list(FAST_PATH_CASES))
def test_bf16_autocast_and_channels_last_train_every_task(
    tmp_path, cache_dir, fast_paths_on_cpu, output_dtypes, case
):
    data, settings = FAST_PATH_CASES[case]
    cfg = make_cfg(tmp_path / case, cache_dir, data, **settings)
    assert cfg.train.amp and cfg.train.channels_last  # the defaults
    trainer, result = fit(cfg)

    assert torch.bfloat16 in output_dtypes  # autocast really ran
    conv = next(
        m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)
    )
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(result.history[0]["train_loss"]) and math.isfinite(result.history[0]["val_loss"])
    saved = weights_of(tmp_path / case)
    assert {t.dtype for t in saved.values() if t.is_floating_point()} == {torch.float32}  # not bf16
    loaded = load_run(tmp_path / case)  # and load into a plain float32 CPU model
    prob, _ = predict_batches(
        loaded.model, trainer.data.images[:8], task=trainer.task,
        normalization=DEFAULT_NORMALIZATION, device=torch.device("cpu"),
    )  # fmt: skip
    assert prob.dtype == np.float32 and ((prob >= 0) & (prob <= 1)).all()


@pytest.mark.parametrize("on_cpu", [False, True])
def test_cpu_takes_the_fast_paths_only_when_the_recipe_says_so(tmp_path, cache_dir, output_dtypes, on_cpu):
    """Without a monkeypatch: train.cpu_fast_paths alone turns bf16 autocast and channels-last on for CPU."""
    cfg = make_cfg(tmp_path / "run", cache_dir, **{"data.max_images": 60, "train.cpu_fast_paths": on_cpu})
    trainer, result = fit(cfg)
    conv = next(  # a 1-channel or 1x1 kernel is contiguous in both layouts
        m for m in trainer.model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1 and m.kernel_size != (1, 1)
    )  # fmt: skip
    assert (torch.bfloat16 in output_dtypes) is on_cpu
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is on_cpu
    assert math.isfinite(result.history[0]["val_loss"])
    saved = weights_of(tmp_path / "run")
    assert {t.dtype for t in saved.values() if t.is_floating_point()} == {torch.float32}


def test_bf16_inference_agrees_with_float32(tiny_run, fast_paths_on_cpu):
    """Validation under autocast scores like float32: same ranking, probabilities within bf16 rounding."""
    from sklearn.metrics import roc_auc_score

    run = load_run(tiny_run)
    data = prepare_data(load_config(tiny_run / "config.yaml"), progress=False)
    val = np.flatnonzero(np.array(data.manifest.splits) == "val")
    y = np.asarray(data.manifest.targets)[val]
    kw = dict(task="binary", normalization=DEFAULT_NORMALIZATION, device=torch.device("cpu"))
    p32, f32 = predict_batches(run.model, data.images[val], features=True, **kw)
    p16, f16 = predict_batches(run.model, data.images[val], features=True, amp=True, channels_last=True, **kw)
    assert p16.dtype == np.float32 and f16.dtype == np.float32
    assert not np.array_equal(p16, p32)  # bf16 did run
    assert np.abs(p16 - p32).max() < 0.05
    assert abs(roc_auc_score(y, p16[:, 0]) - roc_auc_score(y, p32[:, 0])) < 0.01


def test_resume_is_exact_under_autocast(tmp_path, cache_dir, fast_paths_on_cpu):
    settings = {"train.epochs": 2, "train.batch_size": 8, "data.max_images": 40}
    fit(make_cfg(tmp_path / "a", cache_dir, **settings))
    cfg_b = make_cfg(tmp_path / "b", cache_dir, **settings)
    fit(cfg_b, stop_after=1)
    fit(cfg_b, resume=True)
    assert_same_weights(weights_of(tmp_path / "a"), weights_of(tmp_path / "b"), atol=1e-6)



# ------------------------------------------------------------------------------ speed
def test_smoke_training_200_images_is_fast(tmp_path, cache_dir):
    """The README's smoke run: 200 chest_xray images, cnn-small at 64 px, 2 epochs, in under a minute."""
    cfg = make_cfg(
        tmp_path / "smoke",
        cache_dir,
        **{
            "data.max_images": 200,
            "data.size": 64,
            "model.kwargs": {},
            "train.epochs": 2,
            "train.batch_size": 32,
        },
    )
    prepare_data(
        cfg, progress=False
    )  # decode once, so the timing is the training (the cache's own tests time decoding)
    t0 = time.perf_counter()
    result = train(cfg, progress=False)
    seconds = time.perf_counter() - t0
    assert result.epochs_run == 2
    assert seconds < 60, f"200-image smoke training took {seconds:.0f} s"


def test_mixup_off_draws_nothing_and_on_changes_the_batches(tmp_path, monkeypatch) -> None:
    from lungxray.training import loop, losses

    def refuse(*a, **k):
        raise AssertionError("mixup_lambda called with train.mixup 0")

    monkeypatch.setattr(loop, "mixup_lambda", refuse)
    _, off = fit(make_cfg(tmp_path / "off", tmp_path / "cache"))
    lams = []
    monkeypatch.setattr(loop, "mixup_lambda", lambda a, g: lams.append(losses.mixup_lambda(a, g)) or lams[-1])
    _, on = fit(make_cfg(tmp_path / "on", tmp_path / "cache", **{"train.mixup": 0.4}))
    assert len(lams) >= 3 and len(set(lams)) == len(lams)  # one weight per batch
    assert np.isfinite(on.history[0]["train_loss"])
    assert on.history[0]["train_loss"] != off.history[0]["train_loss"]


def test_source_class_weights_balance_classes_within_each_source():
    from lungxray.training.data import source_class_weights

    # source a: 6 positives, 2 negatives; source b: 1 positive, 9 negatives; source c: one class only
    src = np.array(["a"] * 8 + ["b"] * 10 + ["c"] * 2)
    y = np.array([1] * 6 + [0] * 2 + [1] + [0] * 9 + [0, 0])
    w = source_class_weights(src, y)
    assert w.sum() == pytest.approx(1.0)
    share = {s: w[src == s].sum() for s in "abc"}
    assert share == pytest.approx({"a": 8 / 20, "b": 10 / 20, "c": 2 / 20})  # each source keeps its share
    for s in "ab":  # ... split equally between its classes: its prevalence is no longer a prior to learn
        assert w[(src == s) & (y == 1)].sum() == pytest.approx(share[s] / 2)
    assert w[8] == pytest.approx(9 * w[9])  # b's lone positive is drawn as often as its 9 negatives together
    one = source_class_weights(np.zeros(8, int), y[:8])  # one source: plain class balance
    assert one[y[:8] == 1].sum() == pytest.approx(0.5)


def test_source_sampler_epochs_hold_each_sources_classes_equally():
    from lungxray.data.manifest import Manifest
    from lungxray.training.data import epoch_order

    # Kermany-like source: 3 pneumonia per normal; NIH-like: 1 pneumonia per 9 normals
    y = np.array([1] * 300 + [0] * 100 + [1] * 20 + [0] * 180)
    src = ("kermany",) * 400 + ("nih",) * 200
    m = Manifest(paths=tuple(f"f{i}.png" for i in range(600)), labels=np.stack([1 - y, y], axis=1),
                 classes=("NORMAL", "PNEUMONIA"), task="binary", patients=tuple(f"p{i}" for i in range(600)),
                 splits=("train",) * 600, sources=src)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    drawn = np.concatenate([epoch_order(m, np.arange(600), "source-sampler", g) for _ in range(20)])
    nih = np.asarray(src)[drawn] == "nih"
    assert 0.30 < nih.mean() < 0.37  # NIH keeps its third of the epoch
    assert 0.45 < y[drawn][nih].mean() < 0.55 and 0.45 < y[drawn][~nih].mean() < 0.55  # balanced in each
    pooled = np.concatenate([epoch_order(m, np.arange(600), "sampler", g) for _ in range(20)])
    assert y[pooled][np.asarray(src)[pooled] == "nih"].mean() < 0.25  # pooled balance keeps NIH's prior
