"""Seeded, batched sampling from an RCDM: one `Sampling` spec, per-sample generators, and the sampling loop.

Every way of sampling (`pipe(..., seed=s)`, `rcdm sample`, `evaluate`, `analyze`, the app) seeds the same way:
sample k of input key i starts from noise drawn by its own CPU generator, seeded from (seed, i, k). The noise of a
sample therefore does not depend on the batch size, on how many inputs there are or on the device; what remains is
float round-off in batched convolutions (about 1e-6 in pixel values on a CPU).

The names are the diffusers pipeline call's (`num_samples`, `num_inference_steps`, `guidance_scale`, `scheduler`,
`seed`), in `Sampling`, in the flags (`--num-inference-steps`) and in rcdm_pipeline.json alike.

    run = Sampling(num_samples=4, seed=0).resolve(pipe)        # None fields -> the model's recorded choice
    x = sample(pipe, h, keys=range(len(h)), run=run)            # (N*4, 3, R, R) in [0, 1], input-major
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .choices import DEFAULT_SAMPLING  # noqa: F401 - re-exported: rcdm.train reads it here (defined in choices)
from .choices import RENAMED, warn_renamed
from .schedulers import SCHEDULERS

PRIOR_KEY = 2**31 - 1  # noise key of a prior's draw of embeddings, apart from the input keys 0, 1, ...


class Sampler(Protocol):
    """What `sample` draws from: an `RCDMPipeline`, or any object with its sampling call and these two attributes.
    The analyses' tests plug in exact oracles this way (samples that are the conditioning image, or grey whatever
    it is); the app plugs in a recorder that keeps the samples an analysis drew."""

    sampling_defaults: dict    # scheduler, num_inference_steps, guidance_scale: what a None field of Sampling becomes
    dtype: torch.dtype         # the denoiser's precision (recorded in Sampling.dtype)

    def __call__(self, *, embeddings: torch.Tensor, num_samples: int, num_inference_steps: int,
                 guidance_scale: float, scheduler: str, generator: list[torch.Generator], output_type: str,
                 callback: Callable[[int, int], None]):
        """An output whose `.images` are (N*num_samples, 3, R, R) in [0, 1] (output_type "pt"), input-major, sample
        j drawn from generator[j]; `callback(step, num_steps)` after every step."""


def _old_names(cls):
    """Accept the old spellings (rcdm.choices.RENAMED) as keywords and attributes, with a FutureWarning once."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        for old in sorted(RENAMED.keys() & kwargs.keys()):
            warn_renamed(f"Sampling({old}=)", f"{RENAMED[old]}=")
            kwargs[RENAMED[old]] = kwargs.pop(old)
        init(self, *args, **kwargs)

    def alias(old, new):
        def get(self):
            warn_renamed(f"Sampling.{old}", new)
            return getattr(self, new)
        return property(get)

    cls.__init__ = __init__
    for old, new in RENAMED.items():
        setattr(cls, old, alias(old, new))
    return cls


@_old_names
@dataclass(frozen=True)
class Sampling:
    """How samples are drawn, in the pipeline call's names. Fields left None take the model's recorded choice
    (`resolve`)."""

    num_samples: int = 1                    # K samples per input
    num_inference_steps: int | None = None  # sampler steps
    scheduler: str | None = None            # sampler name (rcdm.schedulers.SCHEDULERS)
    guidance_scale: float | None = None     # classifier-free guidance scale; 1 = conditional only
    seed: int = 0                           # base seed of the per-sample generators
    batch_size: int = 64                    # samples per pipeline call (memory only; results do not depend on it)
    dtype: str | None = None                # denoiser precision, recorded from the pipeline by `resolve`

    def __post_init__(self):
        for name in ("num_samples", "num_inference_steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        g = self.guidance_scale
        if g is not None and not (np.isfinite(g) and g >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {g!r}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:  # fail before any image is encoded
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")

    def resolve(self, pipe: Sampler) -> "Sampling":
        """Every None field filled from the pipeline: its recorded sampler, steps and guidance, and its dtype."""
        recorded = {k: v for k, v in pipe.sampling_defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **recorded, dtype=self.dtype or str(pipe.dtype).removeprefix("torch."))

    def describe(self) -> str:
        return f"{self.scheduler}, {self.num_inference_steps} steps, guidance {self.guidance_scale:g}"


def seeded_generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from a tuple of integers. SeedSequence hashes the tuple, so nearby keys give unrelated
    streams; the one seeding scheme of the package (sampling noise and training noise alike)."""
    hi, lo = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return torch.Generator(device).manual_seed(int(hi) << 32 | int(lo))


def sample_generators(seed: int, keys, k: int) -> list[torch.Generator]:
    """One CPU generator per sample, input-major, seeded from (seed, key, sample number)."""
    return [seeded_generator(seed, key, j) for key in keys for j in range(k)]


def prior_generator(seed: int) -> torch.Generator:
    """The generator of a prior's draw of embeddings for base seed `seed` (pipe, `rcdm sample`, the app)."""
    return seeded_generator(seed, PRIOR_KEY)


@contextmanager
def count_unet_rows(pipe):
    """Count the samples an `RCDMPipeline`'s UNet sees while the block runs. Yields a dict whose "rows" is NFE x
    samples (a guided step counts 2): what `evaluate` reports as NFE per sample."""
    count = {"rows": 0}

    def hook(module, args, kwargs):
        count["rows"] += (args[0] if args else kwargs["sample"]).shape[0]

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield count
    finally:
        handle.remove()


def sample_batches(pipe: Sampler, h: torch.Tensor, keys, run: Sampling, callback=None):
    """Yield (first input position, samples (b*K, 3, R, R) in [0, 1]); every batch holds whole groups of K.
    `run` must be resolved. `callback(step, total)` sees the steps of all batches as one count (for progress bars
    in UIs)."""
    per = max(1, run.batch_size // run.num_samples)
    starts = range(0, len(h), per)
    for n, a in enumerate(starts):
        def step(i, total, n=n):
            if callback is not None:
                callback(n * total + i, len(starts) * total)

        out = pipe(embeddings=h[a : a + per], num_samples=run.num_samples, num_inference_steps=run.num_inference_steps,
                   guidance_scale=run.guidance_scale, scheduler=run.scheduler,
                   generator=sample_generators(run.seed, keys[a : a + per], run.num_samples), output_type="pt",
                   callback=step)
        yield a, out.images


def sample(pipe: Sampler, h: torch.Tensor, keys=None, run: Sampling | None = None, callback=None) -> torch.Tensor:
    """K = run.num_samples samples per row of h (N, D): (N*K, 3, R, R) in [0, 1] on the CPU, input-major.

    Keys default to the row positions, which is what `pipe(embeddings=h, num_samples=K, seed=run.seed)` draws;
    rows with equal keys get equal noise, which is how an analysis compares conditions with only h differing."""
    keys = list(range(len(h))) if keys is None else [int(k) for k in keys]
    if len(keys) != len(h):
        raise ValueError(f"{len(h)} embeddings but {len(keys)} noise keys")
    run = (run or Sampling()).resolve(pipe)
    return torch.cat([x.cpu() for _, x in sample_batches(pipe, h.cpu(), keys, run, callback)])
