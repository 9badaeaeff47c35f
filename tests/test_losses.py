"""Tests of npcrepro.losses: perfect predictions, gradients, reductions to BCE/CE, hand cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from npcrepro.errors import DataError
from npcrepro.losses import (
    DiceFocalLoss,
    DiceLoss,
    DistanceWeightedFocalLoss,
    FocalLoss,
    TwoSidedDiceLoss,
    boundary_distance_weights,
)

SHAPES = [(2, 8, 8), (2, 4, 6, 6)]  # (N, *spatial): 2D and 3D


def binary_case(spatial_shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, *spatial = spatial_shape
    target = (torch.rand((n, 1, *spatial), generator=g) > 0.6).float()
    logits = torch.randn((n, 1, *spatial), generator=g)
    return logits, target


def multiclass_case(spatial_shape, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, c, spatial_shape, generator=g)
    logits = torch.randn((spatial_shape[0], c, *spatial_shape[1:]), generator=g)
    return logits, idx


def perfect_logits_binary(target):
    return (target * 2 - 1) * 40.0


def perfect_logits_multiclass(idx, c):
    return F.one_hot(idx, c).movedim(-1, 1).float() * 40.0


ALL_LOSSES = [
    lambda: DiceLoss(),
    lambda: DiceLoss(squared=True, eps=1e-6),
    lambda: TwoSidedDiceLoss(),
    lambda: FocalLoss(alpha=0.25, gamma=2.0),
    lambda: DiceFocalLoss(),
    lambda: DistanceWeightedFocalLoss(gamma=2.0),
]


# ---------------------------------------------------------------------------- perfect predictions


@pytest.mark.parametrize("make", ALL_LOSSES)
@pytest.mark.parametrize("shape", SHAPES)
def test_zero_at_perfect_prediction_binary(make, shape):
    _, target = binary_case(shape)
    loss = make()(perfect_logits_binary(target), target)
    assert loss.ndim == 0
    assert abs(loss.item()) < 1e-6


@pytest.mark.parametrize("make", ALL_LOSSES)
@pytest.mark.parametrize("shape", SHAPES)
def test_zero_at_perfect_prediction_multiclass(make, shape):
    _, idx = multiclass_case(shape)
    logits = perfect_logits_multiclass(idx, 3)
    assert abs(make()(logits, idx).item()) < 1e-6
    onehot = F.one_hot(idx, 3).movedim(-1, 1)  # long one-hot target works too
    assert abs(make()(logits, onehot).item()) < 1e-6


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_positive_for_bad_prediction(make):
    _, target = binary_case(SHAPES[0])
    assert make()(-perfect_logits_binary(target) * 0.05, target).item() > 0.05


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("make", ALL_LOSSES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_sign_binary(make, shape):
    logits, target = binary_case(shape, seed=1)
    logits = logits.clone().requires_grad_(True)
    make()(logits, target).backward()
    grad = logits.grad
    assert torch.isfinite(grad).all()
    fg = target.bool()
    # raising a foreground voxel's logit lowers the loss; raising a background one raises it
    assert (grad[fg] < 0).all()
    assert (grad[~fg] > 0).all()


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_gradient_sign_multiclass(make):
    logits, idx = multiclass_case(SHAPES[1], seed=2)
    logits = logits.clone().requires_grad_(True)
    make()(logits, idx).backward()
    grad = logits.grad
    assert torch.isfinite(grad).all()
    true_class_grad = grad.gather(1, idx.unsqueeze(1))
    assert (true_class_grad < 0).all()


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_gradient_finite_when_saturated(make):
    _, target = binary_case(SHAPES[0])
    logits = (perfect_logits_binary(target) * 3).requires_grad_(True)  # |logit| = 120
    make()(logits, target).backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------------------- focal


@pytest.mark.parametrize("shape", SHAPES)
def test_focal_gamma0_is_bce(shape):
    logits, target = binary_case(shape)
    ours = FocalLoss(alpha=None, gamma=0.0)(logits, target)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(logits, target))
    # class-index-like long mask without channel axis
    ours2 = FocalLoss(alpha=None, gamma=0.0)(logits, target[:, 0].long())
    torch.testing.assert_close(ours2, ours)


@pytest.mark.parametrize("shape", SHAPES)
def test_focal_gamma0_is_cross_entropy(shape):
    logits, idx = multiclass_case(shape, c=4)
    ours = FocalLoss(alpha=None, gamma=0.0)(logits, idx)
    torch.testing.assert_close(ours, F.cross_entropy(logits, idx))
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, idx.unsqueeze(1)), ours)


def test_focal_alpha_is_class_weighted_bce_and_ce():
    logits, target = binary_case(SHAPES[0])
    w = 0.25 * target + 0.75 * (1 - target)
    torch.testing.assert_close(
        FocalLoss(alpha=0.25, gamma=0.0)(logits, target),
        F.binary_cross_entropy_with_logits(logits, target, weight=w),
    )
    logits, idx = multiclass_case(SHAPES[0], c=3)
    cw = torch.tensor([0.2, 0.5, 0.3])
    expected = F.cross_entropy(logits, idx, weight=cw, reduction="none").mean()
    torch.testing.assert_close(FocalLoss(alpha=[0.2, 0.5, 0.3], gamma=0.0)(logits, idx), expected)


def test_focal_by_hand():
    x = torch.tensor([0.0, 2.0, -1.0]).reshape(1, 1, 1, 3)
    y = torch.tensor([1.0, 0.0, 1.0]).reshape(1, 1, 1, 3)
    p = torch.sigmoid(x)
    a, gam = 0.4, 2.0
    expected = torch.where(
        y.bool(), -a * (1 - p) ** gam * torch.log(p), -(1 - a) * p**gam * torch.log(1 - p)
    )
    got = FocalLoss(alpha=a, gamma=gam, reduction="none")(x, y)
    torch.testing.assert_close(got, expected)
    # multi-class, one voxel: -(1 - p_t)^gamma log p_t
    z = torch.tensor([1.0, 0.0, -1.0]).reshape(1, 3, 1, 1)
    pt = torch.softmax(z, 1)[0, 0, 0, 0]
    got = FocalLoss(gamma=2.0)(z, torch.zeros(1, 1, 1, dtype=torch.long))
    torch.testing.assert_close(got, -(1 - pt) ** 2 * torch.log(pt))


def test_focal_gamma_downweights_easy_voxels():
    logits, target = binary_case(SHAPES[0])
    assert FocalLoss(gamma=2.0)(logits, target) < FocalLoss(gamma=0.0)(logits, target)


# ---------------------------------------------------------------------------- Dice family


def test_dice_loss_by_hand():
    x = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    y = torch.ones(1, 1, 2, 2)
    # 1 - (2 * 2 + 1) / (2 + 4 + 1)
    torch.testing.assert_close(DiceLoss(eps=1.0)(x, y), torch.tensor(2 / 7))
    # squared: 1 - (4 + 1) / (4 * 0.25 + 4 + 1)
    torch.testing.assert_close(DiceLoss(eps=1.0, squared=True)(x, y), torch.tensor(1 / 6))
    # xue2020's 1 - DSC with vanishing eps
    torch.testing.assert_close(DiceLoss(eps=0.0)(x, y), torch.tensor(1 - 4 / 6))


def test_dice_loss_options_and_reduction():
    logits, idx = multiclass_case(SHAPES[1], c=3)
    per = DiceLoss(reduction="none")(logits, idx)
    assert per.shape == (2, 3)
    no_bg = DiceLoss(reduction="none", include_background=False)(logits, idx)
    torch.testing.assert_close(no_bg, per[:, 1:])
    assert DiceLoss(batch=True, reduction="none")(logits, idx).shape == (3,)
    torch.testing.assert_close(DiceLoss(reduction="sum")(logits, idx), per.sum())
    # multi-label sigmoid over 3 channels
    ml = DiceLoss(activation="sigmoid", reduction="none")(logits, F.one_hot(idx, 3).movedim(-1, 1))
    assert ml.shape == (2, 3)


def test_two_sided_dice_by_hand_and_literal_form():
    x = torch.zeros(1, 1, 1, 4)  # p = 0.5
    y = torch.tensor([1.0, 1.0, 1.0, 0.0]).reshape(1, 1, 1, 4)
    # fg Dice = 2*1.5/(2+3) = 0.6; bg Dice = 2*0.5/(2+1) = 1/3
    torch.testing.assert_close(TwoSidedDiceLoss(eps=0.0)(x, y), torch.tensor(1 - 0.5 * (0.6 + 1 / 3)))
    torch.testing.assert_close(TwoSidedDiceLoss(eps=0.0, literal=True)(x, y), torch.tensor(1 - 0.5 * (0.6 + 1 / 3)))
    # with eps the printed Eq. 1: 1 - (1.5 + e)/(5 + e) - (0.5 + e)/(3 + e)
    e = 0.3
    expected = 1 - (1.5 + e) / (5 + e) - (0.5 + e) / (3 + e)
    torch.testing.assert_close(TwoSidedDiceLoss(eps=e, literal=True)(x, y), torch.tensor(expected))
    # the printed form goes negative on an empty patch predicted empty; the default does not
    empty = torch.zeros(1, 1, 4, 4)
    assert TwoSidedDiceLoss(eps=e, literal=True)(torch.full((1, 1, 4, 4), -40.0), empty) < -0.4
    assert abs(TwoSidedDiceLoss(eps=e)(torch.full((1, 1, 4, 4), -40.0), empty)) < 1e-6


@pytest.mark.parametrize("pixels", [20, 100, 170])
def test_literal_dice_with_a_large_epsilon_pushes_a_small_structure_to_zero(pixels):
    """luo2020's reason for a small epsilon. Take a structure with ``pixels`` of a cpu-profile batch
    (8 slices of 96 x 80) whose output has sunk to 1e-4 everywhere. With epsilon 0.5 in Eq. (1)'s
    numerator, the loss still falls as every probability of it falls (the gradient on a common logit
    shift is positive: descent lowers it further), so the output collapses to zero; this holds up to
    about sqrt(epsilon * N) = 175 of the batch's N pixels. With epsilon 1e-3 the same structure is
    pulled back up. A structure of 300 pixels is pulled up with either."""
    shape = (1, 1, 8, 96, 80)

    def shift_gradient(eps: float, n_fg: int) -> float:
        target = torch.zeros(shape)
        target.view(-1)[:n_fg] = 1
        shift = torch.tensor(math.log(1e-4 / (1 - 1e-4)), requires_grad=True)
        TwoSidedDiceLoss(eps=eps, literal=True)(shift.expand(shape), target).backward()
        return float(shift.grad)

    assert shift_gradient(0.5, pixels) > 0 > shift_gradient(1e-3, pixels)
    assert shift_gradient(0.5, 300) < 0 and shift_gradient(1e-3, 300) < 0


def test_two_sided_softmax_two_classes_equals_sigmoid_form():
    logits, target = binary_case(SHAPES[0])
    two = torch.cat([torch.zeros_like(logits), logits], 1)  # softmax([0, x])_1 = sigmoid(x)
    torch.testing.assert_close(
        TwoSidedDiceLoss()(two, target[:, 0].long()), TwoSidedDiceLoss()(logits, target)
    )


def test_dice_focal_is_weighted_sum():
    logits, target = binary_case(SHAPES[1])
    beta = 0.3
    combo = DiceFocalLoss(beta=beta, alpha=0.25, gamma=2.0, eps=0.5)(logits, target)
    expected = beta * TwoSidedDiceLoss(eps=0.5)(logits, target) + (1 - beta) * FocalLoss(0.25, 2.0)(
        logits, target
    )
    torch.testing.assert_close(combo, expected)


# ---------------------------------------------------------------------------- distance weights


def test_boundary_distance_weights_by_hand():
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    w = boundary_distance_weights(m)
    expected = np.ones((5, 5))
    expected[1:4, 1:4] = 2.0  # boundary ring: 1 voxel from the outside, + 1
    expected[2, 2] = 3.0  # centre: 2 voxels
    np.testing.assert_allclose(w, expected)
    # anisotropic (y, x) spacing (2, 1) mm
    wa = boundary_distance_weights(m, spacing=(2.0, 1.0))
    assert wa[2, 2] == pytest.approx(3.0)  # nearest outside along x: 2 mm
    assert wa[1, 2] == pytest.approx(3.0)  # nearest outside along y: 2 mm
    assert wa[2, 1] == pytest.approx(2.0)
    assert (wa[~m] == 1).all()


def test_boundary_distance_weights_edges_and_3d():
    full = np.ones((3, 3), bool)  # the array edge counts as outside
    w = boundary_distance_weights(full)
    assert w[1, 1] == 3.0 and w[0, 0] == 2.0
    assert (boundary_distance_weights(np.zeros((2, 4, 4))) == 1).all()
    m3 = np.zeros((5, 7, 7), bool)
    m3[1:4, 1:6, 1:6] = True
    w3 = boundary_distance_weights(m3)
    assert w3[2, 3, 3] == 3.0 and w3[1, 3, 3] == 2.0 and w3[0, 3, 3] == 1.0
    with pytest.raises(DataError):
        boundary_distance_weights(np.zeros((2, 2)), spacing=(1, 1, 1))


def test_distance_weighted_focal_uses_target_weights():
    _, target = binary_case(SHAPES[1], seed=3)
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(4))
    w = np.stack([boundary_distance_weights(t[0].numpy()) for t in target])
    loss = DistanceWeightedFocalLoss(gamma=2.0)
    auto = loss(logits, target)
    given = loss(logits, target, weight=torch.as_tensor(w, dtype=torch.float32))
    torch.testing.assert_close(auto, given)
    manual = (FocalLoss(gamma=2.0, reduction="none")(logits, target)[:, 0] * torch.as_tensor(w).float()).mean()
    torch.testing.assert_close(auto, manual)
    # softmax with two classes: the tumour is class 1
    two = torch.cat([torch.zeros_like(logits), logits], 1)
    torch.testing.assert_close(DistanceWeightedFocalLoss(gamma=2.0)(two, target[:, 0].long()), auto)
    # weights in mm
    cube = torch.zeros(1, 1, 5, 7, 7)
    cube[0, 0, 1:4, 1:6, 1:6] = 1
    lw = DistanceWeightedFocalLoss(gamma=2.0, spacing=(3.0, 1.0, 1.0))
    wm = lw.weights_from_target(torch.zeros_like(cube), cube)
    assert wm.shape == (1, 5, 7, 7)
    assert wm[0, 2, 3, 3].item() == pytest.approx(4.0)  # 3 mm to the outside along y/x, + 1
    assert wm[0, 2, 2, 3].item() == pytest.approx(3.0)  # 2 mm along y (6 mm along z)
    assert wm[0, 1, 3, 3].item() == pytest.approx(4.0)  # 3 mm along z as along y/x


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call",
    [
        lambda: DiceLoss()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5)),
        lambda: DiceLoss()(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4)),  # no channel axis
        lambda: FocalLoss()(torch.zeros(2, 3, 4, 4), torch.full((2, 4, 4), 3)),  # index out of range
        lambda: FocalLoss()(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 2.0)),  # not a mask
        lambda: TwoSidedDiceLoss(activation="softmax")(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)),
        lambda: FocalLoss()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), weight=torch.ones(2, 3, 3)),
        lambda: FocalLoss(alpha=[0.5, 0.5])(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)),
    ],
)
def test_bad_shapes_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_shape_error_message_names_shapes():
    with pytest.raises(DataError, match=r"\(2, 1, 4, 5\).*\(2, 1, 4, 4\)"):
        DiceLoss()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
