"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", Sec. 3):
choose the EMA length after training instead of guessing `--ema-decay` before it.

During training (`rcdm train --posthoc-ema 0.05 0.10`) two or more *power-function* EMAs of the weights are kept.
One with exponent gamma averages the weights seen up to step t with density proportional to tau^gamma, i.e. it
updates with beta_t = (1 - 1/t)^(gamma + 1); its relative standard deviation sigma_rel (the width of that density
over the training length) does not depend on t, so one gamma is "the same EMA" at every length. Their values are
saved every `--posthoc-ema-every` steps. An EMA of any other sigma_rel, at any saved step, is then a linear
combination of the snapshots: the one whose averaging density is closest in L2 to the wanted one
(`solve_weights`). `rcdm posthoc-ema` writes that as a pipeline, for as many sigma_rel as are worth scoring.

EDM2's finding: the best EMA length differs by model size, learning rate and metric, and the FID gained by choosing
it can be large, while the traditional EMA decay is fixed before the first step.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

SNAPSHOT_DIR = "posthoc-ema"
MAX_SIGMA_REL = 0.28  # gamma -> 0 (a uniform average of everything so far) is sigma_rel = 12^-0.5 = 0.2887


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The power-function exponent whose averaging density t^gamma has relative std `sigma_rel`.

    sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)) (EDM2, Eq. 3); multiplied out, gamma is the largest real
    root of gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) with s = sigma_rel^-2."""
    if not 0.0 < sigma_rel < MAX_SIGMA_REL:
        raise ValueError(f"sigma_rel {sigma_rel}: must lie in (0, {MAX_SIGMA_REL}); EDM2's useful range is about "
                         "0.01-0.25 (the EMA's width as a fraction of the training length)")
    s = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def gamma_to_sigma_rel(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def profile_dot(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """Inner products of averaging densities p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t]:

        <p_a, p_b> = (ga + 1)(gb + 1) min(ta, tb)^(ga + gb + 1) / ((ga + gb + 1) ta^(ga + 1) tb^(gb + 1)),

    in logs, since t^(gamma + 1) overflows float64 for gamma in the hundreds and t in the hundreds of thousands."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    log = (np.log(gamma_a + 1) + np.log(gamma_b + 1) - np.log(gamma_a + gamma_b + 1)
           + (gamma_a + gamma_b + 1) * np.log(np.minimum(t_a, t_b))
           - (gamma_a + 1) * np.log(t_a) - (gamma_b + 1) * np.log(t_b))
    return np.exp(log)


def solve_weights(t: list[float], gammas: list[float], t_target: float, gamma_target: float
                  ) -> tuple[np.ndarray, float]:
    """The combination of snapshot densities (steps `t`, exponents `gammas`) closest to the target's, normalised to
    sum to 1, and the relative L2 error of that fit (0 = exact; above ~0.1 the snapshots cannot express it well)."""
    t, g = np.asarray(t, np.float64), np.asarray(gammas, np.float64)
    a = profile_dot(t[:, None], g[:, None], t[None, :], g[None, :])
    b = profile_dot(t, g, t_target, gamma_target)
    x = np.linalg.lstsq(a, b, rcond=None)[0]  # least squares: near-duplicate snapshots make `a` ill-conditioned
    x = x / x.sum()
    c = float(profile_dot(t_target, gamma_target, t_target, gamma_target))
    err = (x @ a @ x - 2 * x @ b + c) / c
    return x, math.sqrt(max(float(err), 0.0))


class PowerEMA:
    """Power-function EMAs of named parameters (one per sigma_rel), in float32 beside the model, with snapshots.

    `update(params, step)` is called after optimizer step `step` (1, 2, ...), so that the first update copies the
    weights (beta_1 = 0) whatever the run's starting point: a run from `--init-from` averages its own steps."""

    def __init__(self, named_params, sigma_rels):
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = self.check(self.sigma_rels)
        params = dict(named_params)
        self.names = list(params)
        self.shadows = [[p.detach().float().clone() for p in params.values()] for _ in self.sigma_rels]

    @staticmethod
    def check(sigma_rels) -> list[float]:
        """The exponents of `sigma_rels`, or a clear error: two or more distinct values in (0, 0.28)."""
        if len(set(sigma_rels)) < 2:
            raise ValueError(f"--posthoc-ema {' '.join(map(str, sigma_rels))}: give at least two different "
                             "sigma_rel values (e.g. 0.05 0.10); EMAs of other lengths are combinations of them")
        return [sigma_rel_to_gamma(s) for s in sigma_rels]

    @torch.no_grad()
    def update(self, named_params, step: int) -> None:
        params = [p.detach().float() for p in dict(named_params).values()]
        for gamma, shadow in zip(self.gammas, self.shadows):
            beta = (1.0 - 1.0 / step) ** (gamma + 1) if step > 0 else 0.0
            torch._foreach_lerp_(shadow, params, 1.0 - beta)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{k}/{name}": t for k, shadow in enumerate(self.shadows) for name, t in zip(self.names, shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, shadow in enumerate(self.shadows):
            for name, t in zip(self.names, shadow):
                key = f"{k}/{name}"
                if key not in state:
                    raise ValueError(f"the checkpoint's post-hoc EMA lacks {key}: it was written with other "
                                     "--posthoc-ema values or another model; resume with the run's own settings")
                t.copy_(state[key])

    def save_snapshots(self, directory: str | Path, step: int) -> list[Path]:
        """One safetensors file per sigma_rel, written to a temporary name and renamed (a crash leaves no torn
        snapshot); what a file is (step, sigma_rel, gamma) is in its metadata, not in its name."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for sigma_rel, gamma, shadow in zip(self.sigma_rels, self.gammas, self.shadows):
            path = directory / f"step-{step:09d}-sigma-{sigma_rel:.4f}.safetensors"
            tmp = path.with_name(path.name + ".tmp")
            meta = {"format": "pt", "step": str(step), "sigma_rel": repr(sigma_rel), "gamma": repr(gamma)}
            save_file({n: t.contiguous() for n, t in zip(self.names, shadow)}, str(tmp), metadata=meta)
            os.replace(tmp, path)
            written.append(path)
        return written


@dataclass(frozen=True)
class Snapshot:
    path: Path
    step: int
    sigma_rel: float
    gamma: float


def list_snapshots(directory: str | Path) -> list[Snapshot]:
    """The snapshots under `directory` (a run's output_dir or its posthoc-ema folder), oldest first."""
    directory = Path(directory)
    if (directory / SNAPSHOT_DIR).is_dir():
        directory = directory / SNAPSHOT_DIR
    found = []
    for path in sorted(directory.glob("step-*.safetensors")):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if {"step", "sigma_rel", "gamma"} <= meta.keys():
            found.append(Snapshot(path, int(meta["step"]), float(meta["sigma_rel"]), float(meta["gamma"])))
    if not found:
        raise FileNotFoundError(f"no post-hoc EMA snapshots under {directory}: train with --posthoc-ema SIGMA "
                                "SIGMA ... (e.g. 0.05 0.10) to record them")
    return sorted(found, key=lambda s: (s.step, s.sigma_rel))


def posthoc_plan(snapshots: list[Snapshot], sigma_rel: float, step: int | None = None
                 ) -> tuple[list[Snapshot], np.ndarray, dict]:
    """Which snapshots (those up to `step`, default the last snapshot's) make the EMA of `sigma_rel` at `step`, with
    which weights, and a record of it (the weights and the fit's error)."""
    last = max(s.step for s in snapshots)
    step = last if step is None else step
    used = [s for s in snapshots if s.step <= step]
    if step > last or not used:
        raise ValueError(f"--step {step}: snapshots cover steps {min(s.step for s in snapshots)}-{last}; choose a "
                         "step in that range (an EMA cannot be reconstructed past the last snapshot)")
    weights, err = solve_weights([s.step for s in used], [s.gamma for s in used], step, sigma_rel_to_gamma(sigma_rel))
    record = {"sigma_rel": sigma_rel, "step": step, "fit_error": round(err, 6),
              "snapshots": [{"file": s.path.name, "weight": round(float(w), 6)} for s, w in zip(used, weights)]}
    return used, weights, record


def synthesize(snapshots: list[Snapshot], sigma_rel: float, step: int | None = None
               ) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights of the power-function EMA of `sigma_rel` at `step`, and `posthoc_plan`'s record of how."""
    used, weights, record = posthoc_plan(snapshots, sigma_rel, step)
    total: dict[str, torch.Tensor] = {}
    for w, snap in zip(weights, used):
        for name, t in load_file(str(snap.path)).items():
            # float64 sums: the least-squares weights alternate in sign and may reach tens in magnitude
            total[name] = total[name] + w * t.double() if name in total else w * t.double()
    return {k: v.float() for k, v in total.items()}, record
