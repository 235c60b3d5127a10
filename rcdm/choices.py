"""The names a user types: the samplers, the default sampling (whose keys are the sampling vocabulary, with the old
spellings it replaced), the augmentations and the memorization settings.

Torch-free, so the command line can offer them as choices without importing torch or diffusers (`rcdm --help`
stays instant). The modules that implement each name import its list from here. A new sampler goes into
`rcdm.schedulers.SCHEDULERS` and its name here, in the same order (tests/test_cli_fast.py checks).
"""
import warnings

SCHEDULER_NAMES = ("ddpm", "ddpm-linspace", "ddim", "dpm++", "unipc", "ddim-logsnr", "sde-dpm++", "sde-dpm++-logsnr")

# What a call that names nothing uses, and what `rcdm train` records in a new model: DDIM, 20 steps, unguided.
# On 400 held-out choosing images and three noise seeds it beat DDPM-20 on every model measured (top-1 +1.8 to +2.4
# points, FD in SSL space about halved), and DPM-Solver++-20 / UniPC-20 on rank (measured on earlier weights; the
# per-run CSVs are in the git history). The shipped models record ddim-logsnr, which beat DDIM-20 on theirs.
# The keys are the sampling vocabulary: the pipeline call, `rcdm.sampling.Sampling`, the flags (--num-inference-steps)
# and rcdm_pipeline.json's "sampling" use these names, as diffusers pipelines do.
DEFAULT_SAMPLING = {"scheduler": "ddim", "num_inference_steps": 20, "guidance_scale": 1.0}

# Old spellings (Sampling's fields and the flags before one vocabulary), still accepted with a FutureWarning.
RENAMED = {"samples_per_image": "num_samples", "steps": "num_inference_steps", "guidance": "guidance_scale"}
_warned: set[str] = set()


def warn_renamed(old: str, new: str) -> None:
    """Say once per process that `old` is a deprecated spelling of `new`."""
    if old not in _warned:
        _warned.add(old)
        warnings.warn(f"{old} is deprecated; use {new} (same meaning)", FutureWarning, stacklevel=3)

AUGMENTATIONS = ("flip", "crop", "hue", "grayscale", "rotation", "blur")  # rcdm.analysis.invariance

MEMORIZATION_BACKGROUNDS = ("frame", "corner", "none")  # rcdm.analysis.memorization: what hides the foreground
MEMORIZATION_MODES = ("patch", "knn")                   # ... and what the samples are conditioned on
