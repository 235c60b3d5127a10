"""Adversarial examples (Bordes et al. 2022, Sec. 4.4): a perturbation invisible in pixels that moves f(x) to
another image's embedding; the samples from f(x_adv) show what the representation now "sees"."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..images import to_pil
from ..metrics import sample_ranks
from ..sampling import sample
from .common import (AnalysisResult, at_resolution, chunks, cosine, default_run, embed, encoder_view, labelled_grid,
                     run_record)


def pgd_attack(encoder, x: torch.Tensor, h_target: torch.Tensor, eps: float = 8 / 255, steps: int = 10,
               step_size: float = 2 / 255) -> torch.Tensor:
    """L-inf PGD (Madry et al. 2018) on the encoder input: maximise cos(f(x'), h_target) subject to
    |x' - x|_inf <= eps and x' in [0, 1], by `steps` signed-gradient steps from x' = x.
    x (B, 3, H, W) in [0, 1], h_target (B or 1, D) -> x_adv (B, 3, H, W) on the CPU."""
    x = x.detach().to(encoder.device)
    target = h_target.detach().to(encoder.device)
    adv = x.clone()
    with torch.enable_grad():
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cosine_similarity(encoder(adv), target, dim=-1).sum()
            (grad,) = torch.autograd.grad(loss, adv)
            adv = torch.minimum(torch.maximum(adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return adv.cpu()


def adversarial(pipe, source, target, eps: float = 8 / 255, steps: int = 10, step_size: float = 2 / 255,
                references=None, run=None) -> AnalysisResult:
    """PGD pushes f(source) towards f(target) (`pgd_attack`), then the model samples from f(x_adv), and, with the
    same noise, from f(source) and f(target) for comparison.

    Numbers: cos(f(x), f(target)) before and cos(f(x_adv), f(target)) after, cos(f(x_adv), f(x)), the perturbation's
    L-inf norm, and for the samples of each condition their mean rank (rcdm.metrics.sample_ranks, cosine, 1 =
    closest) of the source and of the target among the references {source, target, *references} in the
    encoder's space. `references` (optional extra images) make those ranks finer than 1 or 2.
    Default sampling: 4 samples per condition."""
    run = default_run(run, 4)
    enc = pipe.encoder
    x = encoder_view([source, target], enc)  # (2, 3, C, C)
    h = embed(enc, x)  # (2, D)
    x_adv = pgd_attack(enc, x[:1], h[1:], eps, steps, step_size)  # (1, 3, C, C)
    h_adv = embed(enc, x_adv)
    h_ref = torch.cat([h, embed(enc, encoder_view(references, enc))]) if references is not None else h  # (N, D)
    cond = torch.cat([h[:1], h_adv, h[1:]])  # (3, D): source, adversarial, target
    samples = sample(pipe, cond, [0, 0, 0], run)  # (3*K, 3, R, R), the same noise for all three
    h_hat = embed(enc, samples).view(3, run.num_samples, -1)  # (3, K, D)
    names = ("source", "adversarial", "target")
    numbers = {"sampling": run_record(run, pipe), "eps": eps, "steps": steps, "step_size": step_size,
               "linf": (x_adv - x[:1]).abs().max().item(), "cos_to_target_before": cosine(h[0], h[1]).item(),
               "cos_to_target_after": cosine(h_adv[0], h[1]).item(), "cos_adv_to_source": cosine(h_adv[0], h[0]).item(),
               "num_references": len(h_ref),
               "samples": {c: _ranks(h_ref, h_hat[i]) for i, c in enumerate(names)}}
    imgs = to_pil(at_resolution(torch.cat([x[:1], x_adv, x[1:]]), pipe.resolution))
    rows = [[im] + s for im, s in zip(imgs, chunks(to_pil(samples), run.num_samples))]
    labels = [f"{c}\nrank src {numbers['samples'][c]['rank_of_source']:.2f}, "
              f"tgt {numbers['samples'][c]['rank_of_target']:.2f}" for c in names]
    title = (f"PGD eps {eps * 255:.1f}/255, {steps} steps: cos(f(x), f(target)) {numbers['cos_to_target_before']:.3f}"
             f" -> {numbers['cos_to_target_after']:.3f}\nrows: image | samples from its embedding "
             f"(ranks among {len(h_ref)} references)")
    return AnalysisResult("adversarial", numbers, labelled_grid(rows, labels, title))


def _ranks(h_ref: torch.Tensor, h_hat: torch.Tensor) -> dict:
    """Mean rank of the source (reference 0) and of the target (reference 1) for the samples h_hat (K, D):
    the samples are scored once against each as their 'own' reference (rcdm.metrics.sample_ranks)."""
    k = len(h_hat)
    own = torch.cat([h_hat, h_hat, h_hat.new_zeros((len(h_ref) - 2) * k, h_hat.shape[1])])  # groups 0, 1 = the samples
    r = sample_ranks(h_ref, own)[: 2 * k].double().view(2, k)
    return {"rank_of_source": r[0].mean().item(), "rank_of_target": r[1].mean().item(),
            "cos_to_source": cosine(h_hat, h_ref[0]).mean().item(),
            "cos_to_target": cosine(h_hat, h_ref[1]).mean().item()}
