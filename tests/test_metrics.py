"""Parameter and FLOP counts against closed forms; counting leaves the model untouched."""
import pytest
import torch
from torch import nn

from fxprune.metrics import conv_linear_weight_params, count_flops, count_params


def small_net(cin=3, c1=8, c2=16, k=3, classes=10):
    return nn.Sequential(
        nn.Conv2d(cin, c1, k, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.Conv2d(c1, c2, k, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, classes),
    )


def test_count_params_matches_layer_formula():
    cin, c1, c2, k, classes = 3, 8, 16, 3, 10
    expected = (
        (c1 * cin * k * k + c1) + 2 * c1  # conv1 weight + bias, bn1 weight + bias
        + c2 * c1 * k * k + 2 * c2  # conv2 (no bias), bn2
        + classes * c2 + classes  # linear
    )
    net = small_net(cin, c1, c2, k, classes)
    assert count_params(net) == expected
    assert conv_linear_weight_params(net) == c1 * cin * k * k + c2 * c1 * k * k + classes * c2


def test_shared_weight_counts_once():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    net = nn.Sequential(a, b)
    assert count_params(net) == 16 + 4
    assert conv_linear_weight_params(net) == 16
    assert count_flops(net, torch.randn(5, 4)) == 2 * (2 * 5 * 4 * 4)


@pytest.mark.parametrize("cin,cout,k,stride,pad,h", [(3, 8, 3, 1, 1, 16), (4, 6, 5, 2, 0, 17)])
def test_conv_flops_closed_form(cin, cout, k, stride, pad, h):
    n = 2
    ho = (h + 2 * pad - k) // stride + 1
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad)
    assert count_flops(conv, torch.randn(n, cin, h, h)) == n * 2 * cout * cin * k * k * ho * ho


def test_linear_flops_closed_form():
    assert count_flops(nn.Linear(32, 10), (torch.randn(7, 32),)) == 2 * 7 * 32 * 10


class TwoHeads(nn.Module):
    """Two inputs, nested dict/tuple output, BatchNorm in training mode."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x, z):
        h = self.bn(self.conv(x)).mean((2, 3))
        return {"logits": (self.fc(h), h), "z": [z]}


def test_multi_input_dict_output():
    x, z = torch.randn(2, 3, 5, 5), torch.randn(2, 4)
    expected = 2 * (2 * 4 * 3 * 5 * 5) + 2 * (2 * 4 * 2)  # 1x1 conv + linear
    assert count_flops(TwoHeads(), (x, z)) == expected


@pytest.mark.parametrize("training", [True, False])
def test_module_unchanged_after_counting(training):
    net = TwoHeads().train(training)
    with torch.no_grad():  # non-trivial running stats, so a reset would show too
        net.bn.running_mean.uniform_()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params_before = {n: p for n, p in net.named_parameters()}
    count_flops(net, (torch.randn(2, 3, 5, 5), torch.randn(2, 4)))
    after = net.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
        assert not after[name].__class__.__name__.startswith("Fake"), name
    assert {n: p for n, p in net.named_parameters()} == params_before  # same objects
    assert all(m.training == training for m in net.modules())


def test_plain_tensor_attribute_not_mutated():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.ones(4, 3)  # neither parameter nor buffer

        def forward(self, x):
            self.w.mul_(2)  # a forward with a side effect on a plain attribute
            return x @ self.w

    net = Scaled()
    assert count_flops(net, torch.randn(5, 4)) == 2 * 5 * 4 * 3
    assert torch.equal(net.w, torch.ones(4, 3))
