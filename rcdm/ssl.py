"""A small self-supervised encoder for CIFAR-sized images: ResNet-18 with a CIFAR stem, SimCLR objective.

No SSL weights can be downloaded here, so the default models' encoder is trained with this recipe:

    rcdm pretrain --data cifar10_jpeg.npz --test-data cifar10_jpeg.npz:test --out DIR --minutes 40

The result is a directory (config.json + model.safetensors) that the encoder registry loads as `file:DIR`.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast
from safetensors.torch import load_file, save_file

from .augment import simclr_views
from .data import decode_all, open_dataset
from .encoders.cifar import CIFAR_MEAN, CIFAR_STD, SSLEncoder, cifar_encoder_config
from .fsutil import fresh_tmp_dir, replace_dir
from .metrics import knn_predict
from .sampling import seeded_generator
from .ssl_config import SSLConfig  # torch-free, for the command line's flags; re-exported here
from .training.runtime import Cadence, LossWindow, StopRequest, make_accelerator, run_loop

def nt_xent(z1, z2, temperature):
    """SimCLR's NT-Xent loss (Chen et al. 2020, Eq. 1) over 2B views."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B, D)
    sim = z @ z.t() / temperature  # (2B, 2B)
    sim.fill_diagonal_(float("-inf"))
    b = z1.shape[0]
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def _normalize(x01):
    mean = torch.tensor(CIFAR_MEAN, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def train_ssl(cfg: SSLConfig) -> dict:
    """Train SimCLR for `cfg.minutes` (or `cfg.max_steps`), then report kNN accuracy and save. Returns the report.

    Runs on the training runtime (rcdm.training.runtime): Accelerate (bf16 autocast; several processes with
    `accelerate launch`), the loss window and the loop skeleton, so SIGINT/SIGTERM stop after the current step and
    the encoder trained so far is still saved."""
    acc = make_accelerator("bf16" if cfg.bf16 else "no", seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    images, labels, _, _ = decode_all(open_dataset(cfg.data), "decoding train", cfg.resolution)  # uint8 (N, 3, R, R)
    model = SSLEncoder(cfg.width, cfg.proj_hidden, cfg.proj_out)
    if cfg.init_from:
        model.load_state_dict(load_file(str(Path(cfg.init_from) / "model.safetensors")))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if acc.process_index:  # batches and views come from the global RNG: process 0 draws what one process draws
        torch.manual_seed(seeded_generator(cfg.seed, acc.process_index).initial_seed())
    run = SimCLRRun(acc, cfg, *acc.prepare(model, opt), images)
    # The budget is wall-clock time, or steps if they run out first; several processes agree on it every 10 steps.
    cadence = Cadence(cfg.max_steps or sys.maxsize, sync_every=10, max_minutes=cfg.minutes)
    with StopRequest() as request:
        step, _ = run_loop(acc, cadence, request, 0, run.step, run.periodic)
    model = acc.unwrap_model(run.model)
    report = {"steps": step, "minutes": round((time.time() - run.t0) / 60, 1),
              "images_seen": step * cfg.batch_size * acc.num_processes}
    if acc.is_main_process:
        if cfg.test_data:
            report["knn"] = knn_report(model, images, labels, cfg)
        save_encoder(model, cfg, report)
    acc.wait_for_everyone()
    return report


def _progress(step: int, seconds: float, cfg: SSLConfig) -> float:
    """Fraction of the budget used: the larger of wall-clock and (if set) step progress."""
    frac = seconds / (60 * cfg.minutes)
    return max(frac, step / cfg.max_steps) if cfg.max_steps else frac


@dataclass
class SimCLRRun:
    """What the loop does at each step of SimCLR: one optimizer step on two augmented views of a random batch."""

    acc: object
    cfg: SSLConfig
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    images: torch.Tensor   # uint8 (N, 3, R, R), decoded once
    t0: float = field(default_factory=time.time)

    def __post_init__(self):
        self.window = LossWindow(self.acc, 0, self.cfg.out)

    def step(self, step: int) -> None:
        # Cosine schedule over wall-clock time by default: a shared CPU makes step rates unpredictable.
        cfg, frac = self.cfg, self.progress(step)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * frac))
        x = self.images[torch.randint(0, len(self.images), (cfg.batch_size,))].float().div_(255)
        v1, v2 = (_normalize(simclr_views(x, cfg.resolution)).contiguous(memory_format=torch.channels_last)
                  for _ in range(2))
        with self.acc.autocast():
            z = self.model(torch.cat([v1, v2]))  # one forward so BatchNorm sees both views
        loss = nt_xent(*z.float().chunk(2), cfg.temperature)
        self.opt.zero_grad(set_to_none=True)
        self.acc.backward(loss)
        self.opt.step()
        self.window.append(loss)

    def progress(self, step: int) -> float:
        """The budget's fraction used, process 0's on every process: clocks differ, and under DDP the learning rates
        must not (each process's optimizer applies the same averaged gradient)."""
        frac = _progress(step, time.time() - self.t0, self.cfg)
        if self.acc.num_processes > 1:
            frac = broadcast(torch.tensor([frac], device=self.acc.device)).item()
        return frac

    def periodic(self, step: int, force: bool) -> None:
        """Every 50 steps, the mean loss since the last line (the only steps that read it)."""
        if step % 50 == 0:
            values = self.window.reduce()
            self.acc.print(json.dumps({"step": step, "loss": round(sum(values) / len(values), 4),
                                       "min": round((time.time() - self.t0) / 60, 2)}), flush=True)
            self.window.clear(step)


@torch.no_grad()
def embed_uint8(fn, images, batch=500, bf16=True):
    """Apply `fn` to normalised uint8 images in batches -> float (N, D)."""
    out = []
    for i in range(0, len(images), batch):
        x = _normalize(images[i : i + batch].float().div_(255)).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out.append(fn(x).float())
    return torch.cat(out)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k=20, t=0.07):
    """Weighted kNN top-1 (Wu et al. 2018), see `rcdm.metrics.knn_predict`."""
    return (knn_predict(train_feats, train_labels, test_feats, k, t) == test_labels).float().mean().item()


def knn_report(model, train_images, train_labels, cfg):
    """kNN top-1 on the held-out split for backbone and projector, and for the same net with random weights."""
    test_images, test_labels, _, _ = decode_all(open_dataset(cfg.test_data, "test"), "decoding test", cfg.resolution)
    out = {}
    for name, net in [("trained", model), ("random", SSLEncoder(cfg.width, cfg.proj_hidden, cfg.proj_out))]:
        net = net.eval().to(memory_format=torch.channels_last)
        train_b, test_b = embed_uint8(net.backbone, train_images), embed_uint8(net.backbone, test_images)
        with torch.no_grad():  # the projector runs on the pooled backbone features: one pass over the images
            feats = {"backbone": (train_b, test_b), "projector": (net.projector(train_b), net.projector(test_b))}
        for layer, (tr, te) in feats.items():
            acc = knn_accuracy(tr, train_labels, te, test_labels)
            out[f"{name}_{layer}"] = round(acc, 4)
            print(f"kNN top-1 {name} {layer}: {acc:.4f}", flush=True)
    return out


def save_encoder(model, cfg: SSLConfig, report: dict):
    """Write config.json + model.safetensors atomically (temporary directory, then rename).

    A stint (`init_from`) appends its record to the stints of the encoder it continues, so the saved config keeps
    the whole recipe rather than only the last run."""
    dtype = getattr(torch, cfg.save_dtype)
    tmp = fresh_tmp_dir(cfg.out)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    config = {
        **cifar_encoder_config(model, cfg.resolution),
        "training": {"stints": _previous_stints(cfg.init_from) + [{"objective": "simclr", **asdict(cfg), **report}],
                     "weights_dtype": cfg.save_dtype},
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    replace_dir(tmp, cfg.out)


def _previous_stints(init_from: str) -> list[dict]:
    if not init_from or not (path := Path(init_from) / "config.json").exists():
        return []
    training = json.loads(path.read_text()).get("training", {})
    return list(training.get("stints", [training] if training else []))


if __name__ == "__main__":  # `python -m rcdm.ssl ...`: the command line is rcdm.cli.pretrain
    from rcdm.cli.pretrain import main

    main()
