"""A constructed subnet is plain PyTorch: torch.compile (CPU inductor) gives the eager outputs."""
import torch
from torch import nn

import fxprune


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # depthwise
        self.conv3 = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = y + torch.relu(self.conv2(y))
        y = torch.nn.functional.gelu(self.conv3(y))
        return self.fc(y.mean((2, 3)))


def test_compiled_subnet_matches_eager():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 16, 16)
    space = fxprune.trace(model, x)
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet(verify=True)
    assert small.conv3.out_channels < 24
    torch._dynamo.reset()
    compiled = torch.compile(small, backend="inductor")
    with torch.no_grad():
        eager, fast = small(x), compiled(x)
        dense = model(x)
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eager, dense, rtol=1e-4, atol=1e-4)
