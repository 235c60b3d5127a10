"""Noise schedules and samplers, all from diffusers, with x0 kept inside the pixel range.

Pixel-space models that are still under-trained predict x0 far outside [-1, 1]; multistep solvers then
extrapolate that error (DPM-Solver++ reached pixel values of +-14 in a first measurement here). Every sampler is
therefore configured to clip (DDPM, DDIM) or threshold (DPM-Solver++, UniPC) the predicted x0 to [-1, 1].
"""
from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

# Thresholding with sample_max_value=1 clamps the dynamic threshold s to 1, i.e. plain clipping of x0.
_THRESHOLD = {"thresholding": True, "sample_max_value": 1.0}
SCHEDULERS = {
    "ddpm": (DDPMScheduler, {"clip_sample": True, "clip_sample_range": 1.0}),
    # guided-diffusion's respaced ancestral sampler, as RCDM samples its published models (`timestep_respacing
    # "100"` = respace.space_timesteps(1000, [100])): steps round(i (T - 1) / (N - 1)), i.e. 999, 989, ..., 10, 0;
    # betas recomputed between the kept steps (diffusers' DDPM step does that from alphas_cumprod), the last step
    # at t = 0 adds no noise, and x0 is clipped to [-1, 1] (`clip_denoised=True`)
    "ddpm-linspace": (DDPMScheduler, {"clip_sample": True, "clip_sample_range": 1.0, "timestep_spacing": "linspace"}),
    "ddim": (DDIMScheduler, {"clip_sample": True, "clip_sample_range": 1.0, "set_alpha_to_one": True}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, **_THRESHOLD}),
    "unipc": (UniPCMultistepScheduler, {"solver_order": 2, **_THRESHOLD}),
    # DDIM (= first-order DPM-Solver, Lu et al. 2022, Sec. 4.1) on steps uniform in log-SNR instead of in t (their
    # Sec. 3.3): at 20 steps the uniform-t grid ends with one jump from t = 49 (noise sd ~0.17) to x0, where this one
    # takes small steps through the fine detail (measured: the cards' "Session 17").
    "ddim-logsnr": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 1,
                                                  "use_lu_lambdas": True, **_THRESHOLD}),
    # the second-order SDE solver (Lu et al. 2022b, DPM-Solver++(2M) SDE): fresh noise each step, like DDPM
    "sde-dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                                **_THRESHOLD}),
    # the same on steps uniform in log-SNR, as ddim-logsnr
    "sde-dpm++-logsnr": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                                       "use_lu_lambdas": True, **_THRESHOLD}),
}


_SAMPLER_KEYS = {"timestep_spacing"} | {k for _, extra in SCHEDULERS.values() for k in extra}


def training_scheduler(prediction_type: str = "v_prediction", beta_schedule: str = "linear",
                       num_train_timesteps: int = 1000, variance_type: str = "fixed_small") -> DDPMScheduler:
    """The forward process (Ho et al. 2020): the reference's linear betas over 1000 steps. `variance_type`
    "learned_range" is for models with a learned variance (ADM: 6 output channels, Nichol & Dhariwal 2021, Eq. 15)."""
    # "trailing" spacing makes few-step samplers start at t = T-1 (Lin et al. 2024, Table 2).
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type=prediction_type, timestep_spacing="trailing",
                         clip_sample=True, clip_sample_range=1.0, variance_type=variance_type)


def uses_learned_variance(scheduler) -> bool:
    """True for the samplers that read a model's predicted variance (DDPM ancestral); the others take the mean."""
    return getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range") \
        and isinstance(scheduler, DDPMScheduler)


def make_scheduler(name: str, config):
    """A sampler by name, built from another scheduler's config so the noise schedule is shared."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    # Only the noise schedule is shared: another sampler's settings (e.g. ddim-logsnr's use_lu_lambdas, which
    # DPM-Solver++ and its SDE variant also read) would otherwise carry over and silently change this one's grid.
    schedule = {k: v for k, v in dict(config).items() if k not in _SAMPLER_KEYS}
    return cls.from_config(schedule, **_settings(extra))


def _settings(extra: dict) -> dict:
    """A sampler's settings; the grid is "trailing" unless it names its own."""
    return {"timestep_spacing": "trailing", **extra}


def scheduler_name(scheduler) -> str:
    """Inverse of `make_scheduler`: the name whose class and settings the scheduler has (several share a class)."""
    for name, (cls, _) in SCHEDULERS.items():  # exact: a sampler's settings may be a subset of another's
        if type(scheduler) is cls and dict(make_scheduler(name, scheduler.config).config) == dict(scheduler.config):
            return name
    return type(scheduler).__name__
