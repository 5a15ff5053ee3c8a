"""Transposed convolutions: output channels come from weight dim 1, input channels are weight dim 0."""
import torch
from torch import nn

import fxprune
from fxprune.metrics import count_params


class EncoderDecoder(nn.Module):
    def __init__(self, groups: int = 1):
        super().__init__()
        self.enc = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.up = nn.ConvTranspose2d(16, 12, 4, stride=2, padding=1, groups=groups)
        self.bn2 = nn.BatchNorm2d(12)
        self.up1d = nn.ConvTranspose1d(12, 8, 3, padding=1)
        self.head = nn.ConvTranspose1d(8, 2, 1)

    def forward(self, x):
        x = torch.relu(self.bn2(self.up(torch.relu(self.bn1(self.enc(x))))))
        x = torch.relu(self.up1d(x.flatten(2)))  # (N, 12, H*W): a 1-d transposed conv over the pixels
        return self.head(x)


def _randomised(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_transposed_conv_channels_are_prunable_and_exact():
    model = _randomised(EncoderDecoder())
    x = torch.randn(2, 3, 8, 8)
    space = fxprune.trace(model, x)
    by_name = {g.name: g for g in space.groups}
    assert by_name["enc.weight[dim 0]"].prunable  # its consumer is a transposed conv: weight dim 0
    assert by_name["up.weight[dim 1]"].prunable
    assert by_name["up1d.weight[dim 1]"].prunable
    assert not by_name["head.weight[dim 1]"].prunable  # the network output
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet(verify=True)
    assert count_params(small) < count_params(model)
    assert small.up.in_channels == small.enc.out_channels < 16
    assert small.up.out_channels == small.bn2.num_features < 12
    x_other = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(small(x_other), model(x_other), rtol=1e-4, atol=1e-5)


def test_grouped_transposed_conv_is_a_barrier_with_a_reason():
    model = _randomised(EncoderDecoder(groups=4))
    x = torch.randn(2, 3, 8, 8)
    space = fxprune.trace(model, x)
    up = next(g for g in space.groups if g.name == "up.bias[dim 0]")
    assert not up.prunable and "grouped transposed convolution" in up.reason
    enc = next(g for g in space.groups if g.name == "enc.weight[dim 0]")
    assert not enc.prunable
    space.zero_random_groups(0.5, seed=0)
    space.construct_subnet(verify=True)


def test_dhspg_zeroes_transposed_conv_channels_exactly():
    torch.manual_seed(0)
    model = EncoderDecoder()
    x = torch.randn(4, 3, 8, 8)
    space = fxprune.trace(model, x)
    opt = fxprune.DHSPG(space, lr=0.05, target_group_sparsity=0.5, start_pruning_step=2, pruning_steps=6)
    for _ in range(12):
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert opt.group_sparsity() == 0.5
    model.eval()
    small = space.construct_subnet(verify=True)
    assert count_params(small) < count_params(model)
