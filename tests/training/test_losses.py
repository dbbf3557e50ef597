"""Loss weights against imbalance and the masked / smoothed losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lungxray.data.manifest import Manifest
from lungxray.training import (
    class_weights,
    loss_fn,
)


def _manifest(labels: np.ndarray, classes: tuple[str, ...], task: str) -> Manifest:
    n = len(labels)
    return Manifest(
        paths=tuple(f"/x/{i}.png" for i in range(n)),
        labels=labels.astype(np.float32),
        classes=classes,
        task=task,
        patients=tuple(str(i) for i in range(n)),
        splits=("train",) * n,
        root="/x",
    )


def test_class_weights_for_known_imbalance():
    binary = np.array([[1, 0]] * 10 + [[0, 1]] * 30)
    w = class_weights(_manifest(binary, ("NORMAL", "PNEUMONIA"), "binary"))
    assert w.shape == (1,)
    assert w.item() == pytest.approx(10 / 30)  # pos_weight = negatives / positives

    multi = np.eye(3)[[0] * 10 + [1] * 20 + [2] * 70]
    w = class_weights(_manifest(multi, ("Normal", "Covid", "Viral"), "multiclass"))
    np.testing.assert_allclose(w.numpy(), [100 / 30, 100 / 60, 100 / 210], rtol=1e-6)

    nan = np.nan
    ml = np.array([[1, 0, 0], [1, 0, nan], [0, 0, nan], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    w = class_weights(_manifest(ml, ("a", "b", "c"), "multilabel"))
    # a: 2 pos / 4 neg; b: no positive -> neg / 1 = 6; c: 1 pos / 3 neg among the 4 known
    np.testing.assert_allclose(w.numpy(), [2.0, 6.0, 3.0], rtol=1e-6)


def test_loss_masks_nan_targets_in_multilabel():
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.1, -0.7]], requires_grad=True)
    target = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, float("nan")]])
    loss = loss_fn("multilabel", logits, target, None, 0.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad[0, 1] == 0 and logits.grad[1, 2] == 0  # unknown labels contribute nothing
    known = ~torch.isnan(target)
    assert (logits.grad[known] != 0).all()
    expected = F.binary_cross_entropy_with_logits(logits.detach()[known], target[known])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # a row of unknowns only: loss 0, no NaN
    none_known = loss_fn("multilabel", torch.zeros(1, 3), torch.full((1, 3), float("nan")), None, 0.0)
    assert none_known.item() == 0.0


def test_loss_label_smoothing_and_weights():
    logits = torch.tensor([2.0, -1.0, 0.5])
    y = torch.tensor([1.0, 0.0, 1.0])
    smooth = loss_fn("binary", logits[:, None], y, None, 0.1)
    expected = F.binary_cross_entropy_with_logits(logits, y * 0.9 + 0.05)
    assert smooth.item() == pytest.approx(expected.item(), rel=1e-6)
    weighted = loss_fn("binary", logits[:, None], y, torch.tensor([3.0]), 0.0)
    expected = F.binary_cross_entropy_with_logits(logits, y, pos_weight=torch.tensor([3.0]))
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-6)
    mc_logits = torch.tensor([[2.0, 0.1, -1.0], [0.0, 0.5, 0.2]])
    mc_y = torch.tensor([0, 2])
    got = loss_fn("multiclass", mc_logits, mc_y.float(), None, 0.2)
    assert got.item() == pytest.approx(F.cross_entropy(mc_logits, mc_y, label_smoothing=0.2).item())


def test_mixup_loss_is_the_loss_of_the_mixed_soft_target_with_class_weights():
    from lungxray.training.losses import mix_batch, mixup_loss

    logits = torch.tensor([[2.0], [-1.0], [0.5], [0.3]])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    pw, lam = torch.tensor([3.0]), 0.7
    got = mixup_loss("binary", logits, y, pw, 0.0, lam)
    soft = lam * y + (1 - lam) * y.flip(0)
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], soft, pos_weight=pw)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert mixup_loss("binary", logits, y, pw, 0.1, 1.0).item() == pytest.approx(
        loss_fn("binary", logits, y, pw, 0.1).item(), rel=1e-6
    )
    x = torch.arange(8.0).reshape(4, 2)
    assert torch.equal(mix_batch(x.clone(), 1.0), x)
    assert torch.allclose(mix_batch(x.clone(), 0.25), 0.25 * x + 0.75 * x.flip(0))


def test_mixup_lambda_is_one_draw_of_a_beta_from_the_generator():
    from lungxray.training.losses import mixup_lambda

    g = torch.Generator().manual_seed(0)
    lams = np.array([mixup_lambda(0.4, g) for _ in range(2000)])
    assert ((lams > 0) & (lams < 1)).all()
    assert abs(lams.mean() - 0.5) < 0.03  # Beta(a, a) is symmetric
    assert abs(lams.var() - 1 / (4 * (2 * 0.4 + 1))) < 0.01  # var of Beta(a, a) = 1 / (4 (2a + 1))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    mixup_lambda(0.4, g1)
    torch.rand(1, generator=g2, dtype=torch.float64)
    assert torch.equal(g1.get_state(), g2.get_state())  # exactly one draw
