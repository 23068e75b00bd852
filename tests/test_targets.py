"""Targets: hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fastviz import targets
from fastviz.errors import InputError


def test_steering_branches_hand_computed():
    t = targets.Steering(threshold_deg=5.0)  # 5 deg = 0.0872665 rad
    y = torch.tensor([[0.2], [-0.3], [0.05], [-0.05], [0.0873], [-0.0872]])
    got = t(y)
    want = torch.tensor([0.2, 0.3, 20.0, 20.0, 0.0873, 1 / 0.0872])
    torch.testing.assert_close(got, want)
    assert t.bind(y).tolist() == [1, -1, 0, 0, 1, 0]


def test_steering_centre_branch_is_sign_over_y_and_finite_at_zero():
    t = targets.Steering(threshold_deg=10.0, eps=1e-3)
    y = torch.tensor([[0.1], [-0.1], [0.0]])
    torch.testing.assert_close(t(y), torch.tensor([10.0, 10.0, 1000.0]))
    assert math.isclose(t.threshold, math.radians(10.0))


def test_steering_branch_can_be_fixed_from_a_clean_output():
    t = targets.Steering()
    clean = torch.tensor([[0.2]])
    masked = torch.tensor([[0.01]])  # would be the centre branch on its own
    assert t.score(masked, t.bind(clean)).item() == pytest.approx(0.01)


def test_output_class_topclass():
    out = torch.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, -1.0]])
    torch.testing.assert_close(targets.Output(2)(out), torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(targets.Class(1)(out), torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(targets.Class([2, 0])(out), torch.tensor([2.0, 7.0]))
    torch.testing.assert_close(targets.TopClass()(out), torch.tensor([5.0, 7.0]))
    import numpy as np

    torch.testing.assert_close(targets.Class(np.int64(1))(out), torch.tensor([5.0, 0.0]))  # integer-like: one class
    torch.testing.assert_close(targets.Class(torch.tensor(2))(out), torch.tensor([2.0, -1.0]))
    assert targets.TopClass().bind(out).tolist() == [1, 0]


def test_defaults_and_coercion():
    one = torch.zeros(4, 1)
    many = torch.zeros(4, 10)
    assert isinstance(targets.as_target(None, one), targets.Output)
    assert isinstance(targets.as_target(None, many), targets.TopClass)
    assert isinstance(targets.as_target(3, many), targets.Class)
    fn = lambda o: o[:, 0]  # noqa: E731
    assert targets.as_target(fn, many) is fn


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: targets.Output(3)(torch.zeros(2, 3)), "out of range"),
        (lambda: targets.Class(5)(torch.zeros(2, 3)), "out of range"),
        (lambda: targets.Class([0, 1, 2])(torch.zeros(2, 3)), "3 classes for 2 samples"),
        (lambda: targets.Steering(threshold_deg=-1), "threshold"),
        (lambda: targets.as_target("left", torch.zeros(2, 1)), "target must be"),
        (lambda: targets.evaluate(lambda o: o, torch.zeros(2, 3), None, 2), r"one score per sample"),
        (lambda: targets.as_target(None, (torch.zeros(2, 1), torch.zeros(2, 3))), "not a tensor"),
    ],
)
def test_errors(call, match):
    with pytest.raises(InputError, match=match):
        call()
