"""Seeded, batched sampling from an RCDM: one `Sampling` spec, per-sample generators, and the sampling loop.

Every command that samples (`rcdm sample`, `evaluate`, `analyze`, the app) goes through here, so a seed means the
same thing everywhere: sample k of input key i starts from noise drawn by its own CPU generator, seeded from
(seed, i, k). The noise of a sample therefore does not depend on the batch size, on how many inputs there are or
on the device; what remains is float round-off in batched convolutions (about 1e-6 in pixel values on a CPU).

    run = Sampling(samples_per_image=4, seed=0).resolve(pipe)    # None fields -> the model's recorded choice
    x = sample(pipe, h, keys=range(len(h)), run=run)            # (N*4, 3, R, R) in [0, 1], input-major
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .choices import DEFAULT_SAMPLING  # what a call that names nothing uses (the measurement is noted there)
from .schedulers import SCHEDULERS, make_scheduler, scheduler_name


@dataclass(frozen=True)
class Sampling:
    """How samples are drawn. Fields left None take the model's recorded choice (`resolve`)."""

    samples_per_image: int = 1        # K samples per input
    steps: int | None = None          # sampler steps
    scheduler: str | None = None      # sampler name (rcdm.schedulers.SCHEDULERS)
    guidance: float | None = None     # classifier-free guidance scale; 1 = conditional only
    seed: int = 0                     # base seed of the per-sample generators
    batch_size: int = 64              # samples per pipeline call (memory only; results do not depend on it)
    dtype: str | None = None          # denoiser precision, recorded from the pipeline by `resolve`

    def __post_init__(self):
        for name in ("samples_per_image", "steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.guidance is not None and not (np.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance!r}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:  # fail before any image is encoded
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")

    def resolve(self, pipe) -> "Sampling":
        """Every None field filled from the pipeline: its recorded sampler, steps and guidance, and its dtype.
        Objects without recorded defaults (the analyses' test oracles) get DEFAULT_SAMPLING."""
        recorded = {**DEFAULT_SAMPLING, **getattr(pipe, "sampling_defaults", {})}
        current = getattr(pipe, "scheduler", None)  # a pipeline's scheduler is its model's recorded sampler
        unet = getattr(pipe, "unet", None)
        return dataclasses.replace(
            self,
            steps=self.steps if self.steps is not None else recorded["num_inference_steps"],
            guidance=self.guidance if self.guidance is not None else recorded["guidance_scale"],
            scheduler=self.scheduler or (scheduler_name(current) if current is not None else recorded["scheduler"]),
            dtype=self.dtype or (str(unet.dtype).removeprefix("torch.") if unet is not None else "float32"))

    def describe(self) -> str:
        return f"{self.scheduler}, {self.steps} steps, guidance {self.guidance:g}"


def seeded_generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from a tuple of integers. SeedSequence hashes the tuple, so nearby keys give unrelated
    streams; the one seeding scheme of the package (sampling noise and training noise alike)."""
    hi, lo = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return torch.Generator(device).manual_seed(int(hi) << 32 | int(lo))


def sample_generators(seed: int, keys, k: int) -> list[torch.Generator]:
    """One CPU generator per sample, input-major, seeded from (seed, key, sample number)."""
    return [seeded_generator(seed, key, j) for key in keys for j in range(k)]


@contextmanager
def sampling_context(pipe, run: Sampling):
    """Swap in the run's sampler and silence the per-step bar, restoring both afterwards. Yields a dict whose
    "rows" counts the samples passed through the UNet (NFE x samples; a guided step counts 2)."""
    old_scheduler, old_bar = pipe.scheduler, dict(getattr(pipe, "_progress_bar_config", {}))
    count = {"rows": 0}

    def hook(module, args, kwargs):
        count["rows"] += (args[0] if args else kwargs["sample"]).shape[0]

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        if run.scheduler is not None and run.scheduler != scheduler_name(old_scheduler):
            pipe.scheduler = make_scheduler(run.scheduler, old_scheduler.config)
        pipe.set_progress_bar_config(**{**old_bar, "disable": True})
        yield count
    finally:
        handle.remove()
        pipe.scheduler = old_scheduler
        pipe.set_progress_bar_config(**old_bar)


def sample_batches(pipe, h: torch.Tensor, keys, run: Sampling, callback=None):
    """Yield (first input position, samples (b*K, 3, R, R) in [0, 1]); every batch holds whole groups of K.
    `run` must be resolved; the sampler it names must already be in place (`sampling_context`).
    `callback(step, total)` sees the steps of all batches as one count (for progress bars in UIs)."""
    per = max(1, run.batch_size // run.samples_per_image)
    starts = range(0, len(h), per)
    for n, a in enumerate(starts):
        gens = sample_generators(run.seed, keys[a : a + per], run.samples_per_image)
        step_cb = None if callback is None else \
            (lambda i, total, n=n: callback(n * total + i, len(starts) * total))
        kwargs = {} if step_cb is None else {"callback": step_cb}  # test oracles take no callback
        out = pipe(embeddings=h[a : a + per], num_samples=run.samples_per_image, num_inference_steps=run.steps,
                   guidance_scale=run.guidance, generator=gens, output_type="pt", **kwargs)
        yield a, out.images


def sample(pipe, h: torch.Tensor, keys=None, run: Sampling | None = None, callback=None) -> torch.Tensor:
    """K = run.samples_per_image samples per row of h (N, D): (N*K, 3, R, R) in [0, 1] on the CPU, input-major.

    Keys default to the row positions; rows with equal keys get equal noise, which is how an analysis compares
    conditions with only h differing. `pipe` may be any object with the pipeline's sampling call (the analyses'
    tests plug in exact oracles)."""
    keys = list(range(len(h))) if keys is None else [int(k) for k in keys]
    if len(keys) != len(h):
        raise ValueError(f"{len(h)} embeddings but {len(keys)} noise keys")
    run = (run or Sampling()).resolve(pipe)
    ctx = sampling_context(pipe, run) if hasattr(pipe, "unet") else nullcontext()  # oracles have no UNet
    with ctx:
        return torch.cat([x.cpu() for _, x in sample_batches(pipe, h.cpu(), keys, run, callback)])
