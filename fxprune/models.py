"""SmallResNet: a ResNet-style CNN sized for 28×28 single-channel images (Fashion-MNIST).

Built from plain ``nn`` modules with a static forward, so ``torch.fx`` traces it and
fxprune's analysis sees every residual add: the channels joined by an add must be
pruned together, which is what makes it a useful end-to-end example.

Layout for a 28×28 input (default widths 16/32/64, one block per stage, stem stride 2)::

    stem   conv3×3 (stride 2) → BN → ReLU          14×14, widths[0]
    stage1 BasicBlock(s)                           14×14, widths[0]  (identity shortcut)
    stage2 BasicBlock(s), first one strided         7×7,  widths[1]  (1×1 strided projection)
    stage3 BasicBlock(s), first one strided         4×4,  widths[2]  (1×1 strided projection)
    global average pool → linear

The strided stem cuts the forward cost from 18.7 to 5.1 MFLOPs per image, which is
what lets three epochs of Fashion-MNIST train in minutes on two CPU cores;
``stem_stride=1`` gives the classic CIFAR-style layout at full resolution.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus a shortcut, then ReLU (He et al., 2016).

    The shortcut is the identity when shape is preserved, else a strided 1×1 conv + BN
    projection, so the residual add always sees matching shapes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        # bias=False: the following BN has its own shift, a conv bias would be redundant.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem, three stages of BasicBlocks (stride 1, 2, 2), global average pool, linear.

    ``widths``: channels of the three stages (the stem uses ``widths[0]``).
    ``blocks``: BasicBlocks per stage (1 or 2 keeps it small).
    ``stem_stride``: 2 halves the resolution before the first stage (see the module doc).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64),
                 blocks: Sequence[int] = (1, 1, 1), stem_stride: int = 2):
        super().__init__()
        if len(widths) != 3 or len(blocks) != 3:
            raise ValueError(f"widths and blocks need one entry per stage (3), got {tuple(widths)}, {tuple(blocks)}")
        if min(widths) < 1 or min(blocks) < 1:
            raise ValueError(f"widths and blocks must be positive, got {tuple(widths)}, {tuple(blocks)}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = widths[0]
        for index, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if index == 0 else 2  # the stem's resolution, then halved twice
            layers = [BasicBlock(channels, width, stride)]
            layers += [BasicBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
