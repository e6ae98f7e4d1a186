"""The course's worked examples (DESIGN.md), reproduced with the project's own code to four decimals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.specs import with_, xor
from trainq.models import losses
from trainq.models.datasets import one_hot
from trainq.models.engine import fit
from trainq.models.layers import ACTIVATIONS, LAYERS, StochasticPool2d
from trainq.models.spec import ActivationSpec, Conv2dSpec, PadSpec, parse_spec


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_perceptron_for_or():
    # w0 = -0.5 (the bias), w1 = w2 = 1.0, step output +-1
    dense = LAYERS["dense"](parse_spec(xor()).model.layers[2], (2,)).double()
    with torch.no_grad():
        dense.weight.copy_(t([1.0, 1.0]))
        dense.bias.fill_(-0.5)
    x = t([0, 0], [1, 0], [0, 1], [1, 1])
    sums = dense(x).squeeze(1)
    step = ACTIVATIONS["step"](ActivationSpec(type="activation", fn="step"))
    assert sums.tolist() == [-0.5, 0.5, 0.5, 1.5]
    assert step(sums).tolist() == [-1, 1, 1, 1]


def perceptron_spec(gate: str) -> dict:
    return with_(xor(), dataset={"name": gate}, model={"init": "zeros", "layers": [{"type": "dense", "units": 1}]},
                 loss={"type": "perceptron"}, optimizer={"type": "sgd", "lr": 1.0},
                 training={"epochs": 50, "batch_size": 1, "seed": 0}, **{"dataset.preprocess": {"scale": "none"}})


def test_the_perceptron_rule_learns_or_and_cannot_learn_xor():
    assert fit(parse_spec(perceptron_spec("or"))).metrics["test_accuracy"] == 1.0
    assert fit(parse_spec(perceptron_spec("xor"))).metrics["test_accuracy"] < 1.0
    assert fit(parse_spec(xor())).metrics["test_accuracy"] == 1.0  # an MLP with a hidden layer does


@pytest.mark.parametrize("y, o, expected", [(1, 0.98, 0.0291), (1, 0.0001, 13.2877)])
def test_binary_cross_entropy_in_bits(y, o, expected):
    assert losses.binary_cross_entropy(t(o), t(y), base=2).item() == pytest.approx(expected, abs=1e-4)


def test_half_squared_error_saturates_with_a_sigmoid():
    def value_and_gradient(o_target: float):
        s = torch.tensor(math.log(o_target / (1 - o_target)), dtype=torch.float64, requires_grad=True)
        o = torch.sigmoid(s)
        e = losses.half_squared_error(o, t(0.0))
        e.backward()
        return o.item(), e.item(), s.grad.item()

    o1, e1, g1 = value_and_gradient(0.7503)
    o2, e2, g2 = value_and_gradient(0.9971)
    assert (o1, round(e1, 4)) == (pytest.approx(0.7503), 0.2815)
    assert (o2, round(e2, 4)) == (pytest.approx(0.9971), 0.4971)
    assert abs(g2) < abs(g1)  # further from the target, yet a smaller gradient: the sigmoid saturates


def test_cross_entropy_gradient_with_a_sigmoid_is_x_times_o_minus_y():
    x, y = t(0.5, -1.5, 2.0), t(1.0)
    w = t(0.3, 0.2, -0.4).requires_grad_()
    b = t(0.1).requires_grad_()
    o = torch.sigmoid(x @ w + b)
    losses.binary_cross_entropy(o, y).backward()
    assert torch.allclose(w.grad, x * (o - y).detach())
    assert torch.allclose(b.grad, (o - y).detach())


def test_softmax_then_negative_log_likelihood():
    scores = t([3.2, 5.1, -1.7])  # cat, car, frog
    p = torch.softmax(scores, dim=1)[0]
    assert [round(v, 2) for v in p.tolist()] == [0.13, 0.87, 0.00]
    assert losses.negative_log_likelihood(p[0]).item() == pytest.approx(2.04, abs=0.005)
    # the training loss (softmax + NLL on logits) gives the same number
    objective = losses.LOSSES["cross_entropy"](parse_spec(with_(xor(), loss={"type": "cross_entropy"},
                                                                **{"model.layers": [{"type": "dense",
                                                                                     "units": 2}]})), 2)
    assert objective.loss(scores[:, :2].float(), torch.tensor([0])).item() == pytest.approx(
        -math.log(math.exp(3.2) / (math.exp(3.2) + math.exp(5.1))), abs=1e-4)


@pytest.mark.parametrize("p_y, expected", [(0.0508, 4.2990), (0.8360, 0.2584)])
def test_negative_log_likelihood_in_bits(p_y, expected):
    assert losses.negative_log_likelihood(t(p_y), base=2).item() == pytest.approx(expected, abs=1e-4)


def test_multiclass_hinge_is_the_sum_form():
    scores = t([3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1])
    y = torch.tensor([0, 1, 2])
    # by hand: max(0, 5.1-3.2+1) + max(0, -1.7-3.2+1) = 2.9; 0 + 0 = 0; max(0, 2.2+3.1+1) + max(0, 2.5+3.1+1) = 12.9
    assert losses.multiclass_hinge(scores, y).tolist() == pytest.approx([2.9, 0.0, 12.9])


def test_l1_and_l2_norms():
    x = t(1, 2, 3, 4, 5)
    assert losses.l1_norm(x).item() == 15
    # sqrt(55) = 7.41620 (the course's 7.4161 is truncated, not rounded)
    assert losses.l2_norm(x).item() == pytest.approx(7.4161, abs=1e-4)
    assert losses.l2_norm(x).item() == pytest.approx(math.sqrt(55), abs=1e-12)


def test_batch_normalization_uses_the_mini_batch_and_biased_variance():
    spec = parse_spec(with_(xor(), **{"model.layers": [{"type": "batchnorm"}, {"type": "dense", "units": 1}]}))
    bn = LAYERS["batchnorm"](spec.model.layers[0], (3,)).double().train()
    with torch.no_grad():
        bn.weight.copy_(t(2.0, 1.0, 0.5))
        bn.bias.copy_(t(0.1, -0.2, 0.0))
    x = t([1.0, 2.0, 3.0], [3.0, 6.0, 0.0], [5.0, 1.0, 9.0])
    mu, var = x.mean(0), x.var(0, unbiased=False)
    expected = bn.weight * (x - mu) / torch.sqrt(var + bn.eps) + bn.bias
    assert torch.allclose(bn(x), expected)


def test_stochastic_pooling_samples_with_probabilities_a_over_sum():
    torch.manual_seed(0)
    window = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # p = 0.1, 0.2, 0.3, 0.4
    pool = StochasticPool2d(2, 2).train()
    draws = torch.stack([pool(window).flatten() for _ in range(20000)]).flatten()
    freq = [(draws == v).float().mean().item() for v in (1.0, 2.0, 3.0, 4.0)]
    assert freq == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.015)
    assert pool.eval()(window).item() == pytest.approx((1 + 4 + 9 + 16) / 10)  # evaluation: sum p_i a_i


def test_convolution_of_the_course():
    image = torch.tensor([[int(c) for c in row] for row in ("11100", "01110", "00111", "00110", "01100")],
                         dtype=torch.float32).view(1, 1, 5, 5)
    spec = Conv2dSpec(type="conv2d", out_channels=1, kernel=3, stride=1, padding=0, bias=False)
    conv = LAYERS["conv2d"](spec, (1, 5, 5))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]]).view(1, 1, 3, 3))
    assert conv(image).view(3, 3).tolist() == [[4, 3, 4], [2, 4, 3], [2, 3, 4]]
    assert spec.output_shape((1, 5, 5)) == (1, 3, 3)


def test_padding_a_32x32x3_image_by_2():
    pad = PadSpec(type="pad", size=2)
    assert pad.output_shape((3, 32, 32)) == (3, 36, 36)
    assert LAYERS["pad"](pad, (3, 32, 32))(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 36, 36)


def test_one_hot_of_the_course():
    # height, weight, iq, sex (1 of 2), type (3 of 4); the training rows show every category
    x = np.array([[1.755, 65.5, 122, 1, 3], [1.6, 70, 100, 2, 1], [1.8, 80, 110, 1, 2], [1.7, 60, 90, 2, 4]],
                 dtype=np.float32)
    coded = one_hot(x, [3, 4], np.arange(4))
    assert coded[0].tolist() == pytest.approx([1.755, 65.5, 122, 1, 0, 0, 0, 1, 0])


def test_sigmoid_derivative_is_at_most_a_quarter():
    s = torch.linspace(-10, 10, 2001, dtype=torch.float64, requires_grad=True)
    sigma = torch.sigmoid(s)
    sigma.sum().backward()
    assert torch.allclose(s.grad, (sigma * (1 - sigma)).detach())
    assert s.grad.max().item() == pytest.approx(0.25)


def test_zeros_init_keeps_hidden_units_identical_and_random_init_breaks_the_symmetry():
    def hidden_weights(init):
        spec = parse_spec(with_(xor(), **{"model.init": init, "training.epochs": 50}))
        from trainq.models.engine import build, train_one_epoch

        state = build(spec)
        for _ in range(50):
            train_one_epoch(state)
        return state.model[0].weight.detach()

    zeros = hidden_weights("zeros")
    assert torch.equal(zeros, zeros[0].expand_as(zeros))  # all four hidden units are the same unit
    he = hidden_weights("he")
    assert not torch.allclose(he[0], he[1])


def test_weight_decay_step_equals_shrink_then_gradient():
    theta, grad, lr, lam = t(1.0, -2.0, 0.5), t(0.3, 0.1, -0.2), 0.1, 0.01
    assert torch.allclose(theta - lr * (grad + lam * theta), theta * (1 - lr * lam) - lr * grad)
