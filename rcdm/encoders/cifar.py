"""The CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool) with a SimCLR-style MLP projector: the architecture of
the shipped encoder, `file:` arch "cifar_resnet18". Its training recipe is `rcdm.ssl` (`rcdm pretrain`)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool; `width` is the first stage's channels (64 = full)."""

    def __init__(self, width: int = 64, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            stages.append(nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout, 2 if (i and j == 0) else 1)
                                          for j in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.width, self.dim = width, cin

    def forward(self, x):  # (B, 3, H, W) normalised
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))  # (B, 8w, H/8, W/8)
        return x.mean(dim=(2, 3))  # (B, 8w)


def mlp_projector(dims) -> nn.Sequential:
    """SimCLR projector: Linear-BN-ReLU between every pair of dims, a plain Linear at the end."""
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=last))
        if not last:
            layers += [nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class SSLEncoder(nn.Module):
    """backbone + projector, the layout every SSL release shares."""

    def __init__(self, width=32, proj_hidden=512, proj_out=128):
        super().__init__()
        self.backbone = CifarResNet(width)
        self.projector_dims = [self.backbone.dim, proj_hidden, proj_out]
        self.projector = mlp_projector(self.projector_dims)

    def forward(self, x):
        return self.projector(self.backbone(x))


def cifar_encoder_config(model: SSLEncoder, resolution: int) -> dict:
    """The `file:` directory's config.json fields that rebuild `model` (see `from_config`)."""
    return {"arch": "cifar_resnet18", "width": model.backbone.width, "projector_dims": model.projector_dims,
            "preprocess": {"size": resolution, "crop": resolution, "mean": CIFAR_MEAN, "std": CIFAR_STD,
                           "pixel_range": [0, 1]}}


def from_config(cfg: dict) -> SSLEncoder:
    """An untrained `SSLEncoder` for a `file:` config.json (state keys backbone.*, projector.*)."""
    _, hidden, out = cfg["projector_dims"]
    return SSLEncoder(cfg["width"], proj_hidden=hidden, proj_out=out)
