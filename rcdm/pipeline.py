"""`RCDMPipeline`: encode images with the frozen encoder, sample from the conditional denoiser, decode to PIL.

    pipe = RCDMPipeline.from_pretrained()                       # the shipped CIFAR-10 backbone model
    out = pipe(images=[img], num_samples=4, seed=0)             # sample k of input i from noise seeded (0, i, k)
    out.images                                                  # num_samples PIL images per input, input-major

What every sample of one embedding shares, the representation encodes; what varies, it has discarded.
"""
from __future__ import annotations

import inspect
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .adm import ADMUNet
from .encoders import Preprocess, load_encoder
from .encoders.identity import check_encoder_matches, check_encoder_weights  # re-exported: one definition
from .encoders.saved import ENCODER_DIR, bundle_encoder, relocate_spec  # noqa: F401 (relocate_spec re-exported)
from .fsutil import fresh_tmp_dir, keep_foreign_files, replace_dir
from .hub import DEFAULT_MODEL, PIPELINE_FILE, resolve_model_path, shipped_models, upload_to_hub  # noqa: F401
from .images import to_pil, to_uint8
from .model import RCDMUNet
from .prior import Prior
from .choices import DEFAULT_SAMPLING
from .resources import pretrained_root  # noqa: F401 (where shipped models live, re-exported)
from .sampling import prior_generator, sample_generators
from .schedulers import SCHEDULERS, make_scheduler, scheduler_name, uses_learned_variance

FORMAT = "rcdm-pipeline/1"
# A call that names no sampler, steps or guidance uses the model's recorded ones (rcdm_pipeline.json "sampling", chosen
# by measuring fidelity per NFE: benchmarks/sampler_nfe.py), else rcdm.choices.DEFAULT_SAMPLING.


@dataclass
class RCDMPipelineOutput(BaseOutput):
    """`images`: num_samples per input, input-major (PIL list, or a (N, 3, R, R) tensor in [0, 1] / numpy array).
    `embeddings`: the (B, D) conditioning embeddings. `seed`: the base seed of the noise (drawn when the call gave
    none; None when it gave `generator`): `seed=out.seed` draws the same images again."""

    images: list | torch.Tensor | np.ndarray
    embeddings: torch.Tensor
    seed: int | None = None


class RCDMPipeline(DiffusionPipeline):
    """Representation-conditional sampling (Bordes et al. 2022) with a frozen encoder, an `RCDMUNet` and any
    diffusers scheduler (swap with `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`)."""

    def __init__(self, unet: RCDMUNet, scheduler, encoder):
        super().__init__()
        if encoder.dim != unet.config.embedding_dim:
            raise ValueError(
                f"encoder '{encoder.spec}' (layer '{encoder.layer}') gives {encoder.dim}-d embeddings but the "
                f"denoiser was trained on {unet.config.embedding_dim}-d ones; load the encoder it was trained with."
            )
        self.register_modules(unet=unet, scheduler=scheduler, encoder=encoder)
        self.training_info: dict = {}
        self._steps_guidance = {k: DEFAULT_SAMPLING[k] for k in ("num_inference_steps", "guidance_scale")}
        self.prior = None  # an rcdm.prior.Prior over h, for unconditional sampling (`set_prior`)
        self.spec_base = Path(".")  # where a relative `file:` encoder spec is read from: its model dir, once loaded

    def set_prior(self, prior) -> None:
        """Attach a prior p(h) (rcdm.prior.Prior); refused if it draws embeddings of another size."""
        if prior is not None and prior.dim != self.unet.config.embedding_dim:
            raise ValueError(f"the prior draws {prior.dim}-d embeddings but this denoiser takes "
                             f"{self.unet.config.embedding_dim}-d ones (encoder '{self.encoder.spec}', layer "
                             f"'{self.encoder.layer}'); train the prior on this model's embedding cache")
        self.prior = prior

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device=None, dtype: torch.dtype | None = None):
        """Move the denoiser (optionally casting it, e.g. to bf16) and the encoder; the encoder stays in float32
        so embeddings do not depend on the sampling precision."""
        if dtype is not None:
            _cast(self.unet, dtype)
        self.unet.to(device)
        self.encoder.to(device)
        if self.prior is not None:
            self.prior.model.to(device)
        return self

    @property
    def resolution(self) -> int:
        return self.unet.config.sample_size

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's precision (the encoder stays float32)."""
        return self.unet.dtype

    @property
    def sampling_defaults(self) -> dict:
        """What a call that names none of them uses: the current scheduler's name (rcdm.schedulers) and the recorded
        num_inference_steps and guidance_scale. Saved as rcdm_pipeline.json "sampling"."""
        return {"scheduler": scheduler_name(self.scheduler), **self._steps_guidance}

    @sampling_defaults.setter
    def sampling_defaults(self, value: dict) -> None:
        """Record new defaults (keys as above; omitted ones stay); another scheduler name swaps the scheduler."""
        merged = _checked_sampling({**self.sampling_defaults, **value}, "sampling_defaults")
        self.scheduler = self._scheduler_for(merged.pop("scheduler"))
        self._steps_guidance = merged

    # ------------------------------------------------------------------------------------------------ IO
    @classmethod
    def from_pretrained(cls, name_or_path=None, *, revision: str | None = None, cache_dir=None, token=None,
                        encoder=None, device=None, torch_dtype=torch.float32, scheduler: str | None = None):
        """Load a pipeline directory, a shipped model by name (None = the default), a published ImageNet-128 RCDM,
        or a Hub repo id "org/name" (`revision`, `cache_dir`, `token` as in huggingface_hub; HF_HUB_OFFLINE=1 reads
        the cache only). No flags are needed: the directory records the encoder spec, layer, dimension,
        preprocessing, resolution and schedule."""
        path = resolve_model_path(name_or_path, revision=revision, cache_dir=cache_dir, token=token,
                                  pipeline_class=cls)
        meta = read_meta(path)
        unet = denoiser_class(path / "unet").from_pretrained(path / "unet", torch_dtype=torch_dtype)
        enc_cfg = meta["encoder"]
        if encoder is None:
            encoder = load_encoder(enc_cfg["spec"], enc_cfg["layer"], base_dir=path)
            # The model's own view of the images (e.g. RCDM's [-1, 1] pixels), not the registry's default for the spec
            encoder.preprocess = Preprocess.from_dict(enc_cfg["preprocess"])
            check_encoder_weights(encoder, enc_cfg, path)
        else:
            check_encoder_matches(encoder, enc_cfg, path)
        recorded = _checked_sampling(meta.get("sampling", {}), path)
        sched = make_scheduler(scheduler or recorded.pop("scheduler"),
                               DDPMScheduler.load_config(path / "scheduler"))  # any scheduler class reads it
        pipe = cls(unet=unet, scheduler=sched, encoder=encoder)
        pipe.training_info = meta.get("training", {})
        pipe.spec_base = path
        pipe._steps_guidance = {k: recorded[k] for k in ("num_inference_steps", "guidance_scale")}
        if (path / "prior" / "config.json").is_file():
            pipe.set_prior(Prior.from_pretrained(path / "prior"))
        return pipe.to(device) if device is not None else pipe

    def save_pretrained(self, save_directory, dtype: torch.dtype | None = None, training: dict | None = None):
        """Write unet/ (safetensors + config), scheduler/, rcdm_pipeline.json, diffusers' model_index.json and, for
        a local `file:` encoder, a copy of it in encoder/ (the model carries its encoder; a spec never points out
        of the directory). Atomic: a temporary directory is renamed into place, so a crash never leaves a
        half-written model. Saving over an existing model keeps the files the pipeline does not own (a model
        card, sample grids)."""
        out = Path(save_directory)
        tmp = fresh_tmp_dir(out)
        keep_foreign_files(out, tmp, owned={"unet", "scheduler", ENCODER_DIR, PIPELINE_FILE, self.config_name})
        unet = self.unet if dtype is None else _copy_to_dtype(self.unet, dtype)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(tmp / "scheduler")
        enc = self.encoder.config()
        enc["spec"] = bundle_encoder(enc["spec"], self.spec_base, tmp)
        meta = {"format": FORMAT, "encoder": enc, "resolution": self.resolution,
                "pixel_range": [-1.0, 1.0], "prediction_type": self.unet.config.prediction_type,
                "sampling": self.sampling_defaults,
                "training": training or self.training_info}
        (tmp / PIPELINE_FILE).write_text(json.dumps(meta, indent=2))
        self.save_config(tmp)  # model_index.json: the pipeline class and [library, class] per component
        replace_dir(tmp, out)

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload RCDM pipeline", private: bool | None = None,
                    token=None, revision: str | None = None, create_pr: bool = False,
                    dtype: torch.dtype | None = None) -> str:
        """Save to a temporary directory (`save_pretrained`, with the model card of the directory this pipeline was
        loaded from, if any) and upload it to the Hub model repo `repo_id`, created if missing; the commit URL.
        It loads back with `RCDMPipeline.from_pretrained(repo_id)`."""
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            folder = Path(d) / "model"
            self.save_pretrained(folder, dtype=dtype)
            card = Path(self.spec_base) / "README.md"
            if (Path(self.spec_base) / PIPELINE_FILE).is_file() and card.is_file():
                shutil.copy2(card, folder / "README.md")
            return upload_to_hub(folder, repo_id, commit_message=commit_message, private=private, token=token,
                                 revision=revision, create_pr=create_pr)

    # ------------------------------------------------------------------------------------------------ API
    @torch.no_grad()
    def encode(self, images, batch_size: int = 256) -> torch.Tensor:
        """Images (PIL list, paths, or a (B, 3, H, W) tensor in [0, 1]) -> (B, D) frozen embeddings."""
        return self.encoder.encode(images, batch_size=batch_size).to(self.device)

    @torch.no_grad()
    def __call__(self, images=None, embeddings=None, num_samples: int = 1, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, scheduler: str | None = None, seed: int | None = None,
                 generator=None, output_type: str = "pil", return_dict: bool = True, callback=None):
        """Sample `num_samples` images for each input image or embedding.

        `num_inference_steps`, `guidance_scale` and `scheduler` (a name of rcdm.schedulers.SCHEDULERS, for this call
        only) default to the model's recorded choice (`sampling_defaults`).

        Seeding is rcdm's one scheme (rcdm.sampling): sample k of input i starts from noise of its own generator,
        seeded from (seed, i, k), so `pipe(images, num_samples=K, seed=s)` draws what `rcdm sample --seed s`, the
        app and `rcdm.sampling.sample` draw, whatever the batch. Without `seed` (and `generator`) a seed is drawn
        from torch's global generator and returned as `out.seed`. With a prior and no input, the `num_samples`
        embeddings come from p(h) with `rcdm.sampling.prior_generator(seed)`, then one image from each.
        `generator` is diffusers' argument and replaces the scheme: a list of one generator per sample (what
        `rcdm.sampling.sample` passes), or one generator that draws all the noise in turn (then a sample depends on
        its place in the batch).

        All inputs x samples go through the UNet together, one call per step; with `guidance_scale != 1` the
        conditional and null-conditioned halves share that call too. `callback(step, num_steps)` is called after
        every step (for progress bars in UIs; a call with a callback shows no bar of its own).
        """
        if seed is not None and generator is not None:
            raise ValueError("pass `seed` or `generator`, not both")
        if generator is None:
            seed = int(torch.randint(0, 2**32, ())) if seed is None else _checked_seed(seed)
        num_inference_steps, guidance_scale = self.resolve_sampling(num_inference_steps, guidance_scale)
        _check_sampling_args(num_samples, num_inference_steps, guidance_scale, output_type)
        sched = self._scheduler_for(scheduler)
        if images is None and embeddings is None and self.prior is not None:  # unconditional: h ~ p(h) first
            first = generator[0] if isinstance(generator, (list, tuple)) else generator
            embeddings = self.sample_embeddings(num_samples, prior_generator(seed) if generator is None else first)
            num_samples = 1
        h = self._conditioning(images, embeddings)  # (B, D)
        generator = sample_generators(seed, range(len(h)), num_samples) if generator is None else generator
        h = h.repeat_interleave(num_samples, dim=0)  # (B*S, D), input-major
        x = self._sample(h, sched, num_inference_steps, guidance_scale, generator, callback)  # (B*S, 3, R, R), [-1, 1]
        out = _postprocess(x, output_type)
        return RCDMPipelineOutput(images=out, embeddings=h[::num_samples], seed=seed) if return_dict else (out,)

    @torch.no_grad()
    def sample_embeddings(self, n: int, generator=None, near=None, strength: float = 1.0,
                          num_inference_steps: int = 50) -> torch.Tensor:
        """n embeddings (n, D) from the model's prior p(h). `near` (images or (D,)/(1, D) embedding) with
        strength < 1 noises its embedding part of the way and denoises back: representations near that one."""
        if self.prior is None:
            raise ValueError("this model has no prior p(h): train one with `rcdm train-prior --cache C --model DIR`")
        if near is not None and not isinstance(near, torch.Tensor):
            near = self.encode(near if isinstance(near, (list, tuple)) else [near])[:1]
        h = self.prior.sample(n, generator, num_inference_steps, near=None if near is None else near.reshape(1, -1),
                              strength=strength if near is not None else 1.0)
        return h.to(self.device)

    def resolve_sampling(self, num_inference_steps=None, guidance_scale=None) -> tuple[int, float]:
        """The steps and guidance a call will use: the given ones, else the model's recorded defaults."""
        d = self.sampling_defaults
        return (d["num_inference_steps"] if num_inference_steps is None else num_inference_steps,
                d["guidance_scale"] if guidance_scale is None else guidance_scale)

    # ------------------------------------------------------------------------------------------------ internals
    def _conditioning(self, images, embeddings) -> torch.Tensor:
        if images is None and embeddings is None:
            raise ValueError("pass `images` or `embeddings`: this model has no prior p(h) for unconditional sampling "
                             "(train one with `rcdm train-prior --cache C --model DIR`)")
        if images is not None and embeddings is not None:
            raise ValueError("pass exactly one of `images` or `embeddings`")
        if embeddings is None:
            return self.encode(images if isinstance(images, (list, tuple, torch.Tensor)) else [images])
        h = torch.as_tensor(embeddings)
        h = h.unsqueeze(0) if h.ndim == 1 else h
        if h.ndim != 2 or h.shape[1] != self.unet.config.embedding_dim:
            raise ValueError(
                f"embeddings must have shape (B, {self.unet.config.embedding_dim}) for this model "
                f"(encoder '{self.encoder.spec}', layer '{self.encoder.layer}'); got {tuple(h.shape)}"
            )
        if not torch.isfinite(h).all():
            raise ValueError("embeddings contain NaN or inf")
        return h.to(self.device, torch.float32)

    def _scheduler_for(self, name: str | None):
        """The pipeline's scheduler, or for another name a new one on the same noise schedule."""
        if name is None or name == scheduler_name(self.scheduler):
            return self.scheduler
        return make_scheduler(name, self.scheduler.config)

    def _sample(self, h, sched, num_inference_steps, guidance_scale, generator, callback):
        n, r = h.shape[0], self.resolution
        x = randn_tensor((n, 3, r, r), generator=generator, device=self.device, dtype=torch.float32)
        sched.set_timesteps(num_inference_steps, device=self.device)
        x = x * sched.init_noise_sigma
        # Only the stochastic samplers (DDPM, DDIM with eta > 0) take a generator.
        extra = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
        steps = sched.timesteps if callback is not None else self.progress_bar(sched.timesteps)
        for i, t in enumerate(steps):
            pred = self._predict(sched.scale_model_input(x, t), t, h, guidance_scale, uses_learned_variance(sched))
            x = sched.step(pred, t, x, **extra).prev_sample
            if callback is not None:
                callback(i + 1, len(sched.timesteps))
        return x

    def _predict(self, x, t, h, guidance_scale, learned_variance: bool):
        """Model output in float32; classifier-free guidance as uncond + g (cond - uncond) (Ho & Salimans 2022).
        A learned variance (channels 3-5 of an ADM) goes to the samplers that read it, from the conditional
        half; the others get the mean prediction alone."""
        if guidance_scale == 1.0:
            out = self.unet(x.to(self.unet.dtype), t, h).sample.float()
        else:
            drop = torch.cat([torch.zeros(len(h)), torch.ones(len(h))]).bool()
            both = self.unet(torch.cat([x, x]).to(self.unet.dtype), t, torch.cat([h, h]), drop_mask=drop).sample
            cond, uncond = both.float().chunk(2)
            c = x.shape[1]  # guidance moves the mean prediction; the variance stays the conditional one
            out = torch.cat([uncond[:, :c] + guidance_scale * (cond[:, :c] - uncond[:, :c]), cond[:, c:]], 1)
        return out if learned_variance else out[:, : x.shape[1]]


def _checked_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _check_sampling_args(num_samples, num_inference_steps, guidance_scale, output_type):
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if not np.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    if output_type not in ("pil", "pt", "np"):
        raise ValueError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")


def denoiser_class(unet_dir: Path):
    """RCDMUNet, or ADMUNet for the reference network (converted RCDM checkpoints), by the saved class name."""
    name = json.loads((Path(unet_dir) / "config.json").read_text()).get("_class_name")
    return ADMUNet if name == "ADMUNet" else RCDMUNet


def read_meta(name_or_path=None, revision: str | None = None, cache_dir=None, token=None) -> dict:
    """A model's rcdm_pipeline.json (encoder, sampling, training record) without loading its weights (of a Hub repo,
    only that file is fetched)."""
    path = resolve_model_path(name_or_path, revision=revision, cache_dir=cache_dir, token=token,
                              allow_patterns=[PIPELINE_FILE], pipeline_class=RCDMPipeline)
    meta = json.loads((path / PIPELINE_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported pipeline format {meta.get('format')!r} (expected {FORMAT}).")
    if "scheduler" in meta:  # written before one sampling vocabulary: the sampler apart from "sampling"
        meta["sampling"] = {"scheduler": meta.pop("scheduler"), **meta.get("sampling", {})}
    return meta


def recorded_sampling(name_or_path=None) -> dict:
    """A model's sampling defaults (scheduler, steps, guidance) without loading its weights, e.g. for UI widgets."""
    path = resolve_model_path(name_or_path, allow_patterns=[PIPELINE_FILE])
    return _checked_sampling(read_meta(path).get("sampling", {}), path)


def _checked_sampling(recorded: dict, where) -> dict:
    """DEFAULT_SAMPLING overridden by a model's recorded values, refused early if they could not run."""
    unknown = set(recorded) - set(DEFAULT_SAMPLING)
    if unknown:
        raise ValueError(f"{where}: unknown sampling defaults {sorted(unknown)}; known: {sorted(DEFAULT_SAMPLING)}")
    merged = {**DEFAULT_SAMPLING, **recorded}
    try:
        _check_sampling_args(1, merged["num_inference_steps"], merged["guidance_scale"], "pil")
        if merged["scheduler"] not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {merged['scheduler']!r}; choose one of {', '.join(SCHEDULERS)}")
    except ValueError as e:
        raise ValueError(f"{where}: bad sampling defaults in {PIPELINE_FILE}: {e}") from None
    return merged


def _postprocess(x, output_type):
    x = ((x.clamp(-1, 1) + 1) / 2).cpu()  # (N, 3, R, R) in [0, 1]
    if output_type == "pt":
        return x
    return to_uint8(x).permute(0, 2, 3, 1).numpy() if output_type == "np" else to_pil(x)  # np: (N, R, R, 3) uint8


def _cast(module, dtype):
    """Cast floating-point weights; nn.Module's half()/bfloat16()/float() avoid ModelMixin.to's fp32 warning."""
    names = {torch.float16: "half", torch.bfloat16: "bfloat16", torch.float32: "float"}
    if dtype not in names:
        raise ValueError(f"unsupported dtype {dtype}; use one of {list(names)}")
    return getattr(module, names[dtype])()


def _copy_to_dtype(module, dtype):
    import copy

    return _cast(copy.deepcopy(module), dtype)
