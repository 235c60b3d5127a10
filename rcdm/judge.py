"""An independent judge: a supervised CIFAR-10 classifier that scores samples without the conditioning encoder.

Rank and FD in the SSL encoder's own space reward samples that satisfy that encoder, which the denoiser was trained
to do. A classifier trained with labels on the training split only asks a different question: does the sample show
an object of its source image's class, and do its penultimate features look like those of real photographs?

The network is a residual VGG in the style of Page's "ResNet-9" (conv-BN-ReLU stages with max-pool downsampling and
two residual pairs), global max-pooling, and a scaled linear head. Its recipe is `tools/train_judge.py`; the
shipped weights are `pretrained/cifar10-judge` (see its card).

    judge = load_judge("pretrained/cifar10-judge")
    logits, feats = judge.classify(x01)      # x01 (B, 3, 32, 32) in [0, 1] -> (B, 10), (B, C)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fsutil import atomic_file
from .resources import pretrained_root

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
ARCH = "cifar-resnet9"


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + f(x) with f two conv-BN-ReLU layers at constant width."""

    def __init__(self, c: int):
        super().__init__()
        self.f = nn.Sequential(conv_bn(c, c), conv_bn(c, c))

    def forward(self, x):
        return x + self.f(x)


class JudgeNet(nn.Module):
    """(B, 3, 32, 32) normalised -> logits (B, classes), and the pooled penultimate features (B, widths[-1])."""

    def __init__(self, widths=(64, 128, 256, 384), num_classes: int = 10, logit_scale: float = 0.125):
        super().__init__()
        w0, w1, w2, w3 = self.widths = tuple(widths)
        self.body = nn.Sequential(
            conv_bn(3, w0),
            conv_bn(w0, w1), nn.MaxPool2d(2), Residual(w1),   # (B, w1, 16, 16)
            conv_bn(w1, w2), nn.MaxPool2d(2),                  # (B, w2, 8, 8)
            conv_bn(w2, w3), nn.MaxPool2d(2), Residual(w3),   # (B, w3, 4, 4)
        )
        self.head = nn.Linear(w3, num_classes, bias=False)
        self.logit_scale = logit_scale  # a small output scale keeps early softmaxes soft (Page's recipe)

    def forward(self, x):
        feats = self.body(x).amax(dim=(2, 3))  # (B, w3)
        return self.head(feats) * self.logit_scale, feats


class Judge(nn.Module):
    """A trained JudgeNet with its normalisation: images in [0, 1] -> (logits, features), flip-averaged."""

    def __init__(self, net: JudgeNet, mean, std, resolution: int = 32, info: dict | None = None):
        super().__init__()
        self.net, self.resolution, self.info = net.eval(), resolution, info or {}
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: BatchNorm statistics never move

    @torch.no_grad()
    def classify(self, x01: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """x01 (B, 3, H, W) in [0, 1] (uint8 is scaled) -> float32 logits (B, classes) and features (B, C), each the
        mean over the image and its mirror image (test-time flip augmentation)."""
        logits, feats = [], []
        for x in x01.split(batch_size):
            x = x.to(self.device)
            x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
            if x.shape[-2:] != (self.resolution, self.resolution):
                x = F.interpolate(x, size=self.resolution, mode="bilinear", antialias=True, align_corners=False)
            x = (x - self.mean) / self.std
            both = torch.cat([x, x.flip(3)])  # (2b, 3, R, R)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                lo, fe = self.net(both)
            logits.append(lo.float().view(2, len(x), -1).mean(0))
            feats.append(fe.float().view(2, len(x), -1).mean(0))
        return torch.cat(logits).cpu(), torch.cat(feats).cpu()


def save_judge(net: JudgeNet, out_dir, mean, std, info: dict, resolution: int = 32, dtype=torch.float16) -> Path:
    """Write `config.json` + `model.safetensors` (weights in `dtype`; BatchNorm statistics stay float32)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() and "running_" not in k else v).detach().cpu().contiguous()
             for k, v in net.state_dict().items()}
    config = {"arch": ARCH, "widths": list(net.widths), "num_classes": net.head.out_features, "logit_scale": net.logit_scale,
              "resolution": resolution, "mean": list(mean), "std": list(std), "pixel_range": [0, 1], **info}
    with atomic_file(out / WEIGHTS_FILE) as tmp:  # a crash never leaves half a weights file under the real name
        save_file(state, str(tmp))
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_judge(path, device: str | torch.device = "cpu") -> Judge:
    """The judge saved in directory `path` (a shipped name under pretrained/ also works), float32 on `device`."""
    from safetensors.torch import load_file

    d = _resolve(path)
    config = json.loads((d / CONFIG_FILE).read_text())
    if config.get("arch") != ARCH:
        raise ValueError(f"{d / CONFIG_FILE}: arch {config.get('arch')!r} is not a judge ({ARCH!r}); pass the "
                         "directory written by tools/train_judge.py, e.g. pretrained/cifar10-judge")
    net = JudgeNet(tuple(config["widths"]), config["num_classes"], config["logit_scale"])
    try:
        state = load_file(str(d / WEIGHTS_FILE))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except Exception as e:  # safetensors' and torch's messages do not name the file
        raise ValueError(f"{d / WEIGHTS_FILE}: cannot load judge weights ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'empty'}); re-export it with tools/train_judge.py") from None
    info = {"path": str(d), **{k: v for k, v in config.items()
                               if k not in ("widths", "num_classes", "logit_scale", "mean", "std")}}
    return Judge(net, config["mean"], config["std"], config["resolution"], info).to(device)


def _resolve(path) -> Path:
    p = Path(path)
    if (p / CONFIG_FILE).is_file():
        return p
    shipped = pretrained_root() / str(path)  # a shipped name, e.g. "cifar10-judge"
    if (shipped / CONFIG_FILE).is_file():
        return shipped
    raise FileNotFoundError(f"no judge at {path!r} (looked for {CONFIG_FILE} there and in {pretrained_root()}); "
                            "pass pretrained/cifar10-judge or a directory written by tools/train_judge.py")
