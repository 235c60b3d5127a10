"""The end of a run: a pipeline with the EMA weights (also what the grids sample), its `save_pretrained` export, the
lineage of runs behind its weights, and the model card."""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import load_file, save_file

from ..cache import VIEWS, EmbeddingCache
from ..choices import DEFAULT_SAMPLING
from ..encoders.saved import relocate_spec
from ..fsutil import fresh_tmp_dir
from ..phema import Snapshot, synthesize
from ..pipeline import RCDMPipeline, denoiser_class, read_meta
from ..schedulers import make_scheduler
from ..train_config import TrainConfig
from .setup import load_cache_encoder, noise_schedule


def ema_pipeline(acc, cfg: TrainConfig, ema, unet, cache: EmbeddingCache, encoder=None) -> RCDMPipeline:
    """A pipeline holding a copy of the UNet with the EMA weights (the training weights are untouched)."""
    model = copy.deepcopy(acc.unwrap_model(unet))
    # Without Accelerate's autocast wrapper (of the copy only): grids and scores sample in float32, as the export
    # and `rcdm sample` do, so they show the same images.
    model = acc.unwrap_model(model, keep_fp32_wrapper=False).float().to(memory_format=torch.contiguous_format)
    model._compiled_call_impl = None  # --compile: sample eagerly, sampling shapes would only trigger recompiles
    ema.copy_to(model.parameters())
    encoder = load_cache_encoder(cache) if encoder is None else encoder
    sched = make_scheduler(DEFAULT_SAMPLING["scheduler"], noise_schedule(cfg, model).config)
    pipe = RCDMPipeline(unet=model.eval(), scheduler=sched, encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export(acc, cfg: TrainConfig, unet, ema, cache: EmbeddingCache, step: int, command: str, encoder=None) -> Path:
    """Save the EMA pipeline to output_dir/pipeline with a model card holding the exact command."""
    out = Path(cfg.output_dir) / "pipeline"
    if acc.is_main_process:
        pipe = ema_pipeline(acc, cfg, ema, unet, cache, encoder)
        info = {"command": command, "steps": step, "config": dataclasses.asdict(cfg),
                "batch": {"num_processes": acc.num_processes, "per_device": cfg.batch_size,
                          "grad_accum": cfg.grad_accum, "global": acc.num_processes * cfg.batch_size * cfg.grad_accum},
                "cache": {k: cache.meta[k] for k in ("data", "fingerprint", "views", "num_bad")}}
        info["history"] = lineage(init_training_info(cfg), command, step)
        pipe.save_pretrained(out, dtype=getattr(torch, cfg.export_dtype), training=info)  # re-aims a relative spec
        model_card(info, cache).save(out / "README.md")
    acc.wait_for_everyone()
    return out


def init_training_info(cfg: TrainConfig) -> dict:
    """The `training` record of the --init-from model ({} for a run from scratch)."""
    return (read_meta(cfg.init_from).get("training") or {}) if cfg.init_from else {}


def runs_behind(training: dict) -> list[dict]:
    """The runs ({command, steps}) behind a model's weights, oldest first, from its `training` record."""
    if "history" in training:
        return list(training["history"])
    # a model exported before histories were recorded, or none at all
    return [{"command": training["command"], "steps": training["steps"]}] if "steps" in training else []


def lineage(prev: dict, command: str, steps: int) -> list[dict]:
    """Every run ({command, steps}) a model descends from via --init-from, oldest first, this one last.

    `steps` alone counts only the last run; stints would otherwise lose the training they continue."""
    return runs_behind(prev) + [{"command": command, "steps": steps}]


UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def derive_pipeline(template: Path, out: Path, weights: dict[str, torch.Tensor], command: str,
                    history: list[dict] | None = None, record: dict | None = None) -> Path:
    """A copy of the exported pipeline `template` with new UNet `weights` (every tensor of its weight file, stored
    in the template's dtypes): a weight average or a post-hoc EMA. Its training history is `history` (default:
    the template's) plus this operation as a run of 0 steps, so the table of runs still sums every optimizer step
    behind the weights; `record` is kept beside it in `training`. Built in `out`.tmp, then renamed."""
    template, out = Path(template), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory so nothing is overwritten")
    old = load_file(str(template / UNET_WEIGHTS))
    if weights.keys() != old.keys() or any(weights[k].shape != old[k].shape for k in old):
        raise ValueError(f"the new weights do not fit {template}'s UNet (other names or shapes)")
    meta = json.loads((template / "rcdm_pipeline.json").read_text())
    # A relative `file:` encoder spec is read from the pipeline's own directory; re-aim it from the new one.
    meta["encoder"]["spec"] = relocate_spec(meta["encoder"]["spec"], out, base=template)
    training = meta.setdefault("training", {})
    runs = (runs_behind(training) if history is None else history) + [{"command": command, "steps": 0}]
    training.update(command=command, steps=0, history=runs, **(record or {}))
    tmp = fresh_tmp_dir(out)
    shutil.rmtree(tmp)
    shutil.copytree(template, tmp)
    # fp32 arithmetic happened upstream; each tensor goes back to the dtype the template stored it in.
    save_file({k: weights[k].to(old[k].dtype).contiguous() for k in old}, str(tmp / UNET_WEIGHTS),
              metadata={"format": "pt"})
    (tmp / "rcdm_pipeline.json").write_text(json.dumps(meta, indent=2))
    tmp.rename(out)  # a crash before here leaves no half-written pipeline under the requested name
    return out


def export_posthoc_ema(template: Path, out: Path, snapshots: list[Snapshot], sigma_rel: float, step: int | None,
                      command: str) -> tuple[Path, dict]:
    """The pipeline `template` (the run's export) with the post-hoc EMA of `sigma_rel` at `step` as its weights;
    the UNet's buffers (embedding statistics) are the template's. Returns the directory and how it was made."""
    weights, record = synthesize(snapshots, sigma_rel, step)
    unet = denoiser_class(Path(template) / "unet").from_pretrained(Path(template) / "unet")
    params = [n for n, _ in unet.named_parameters()]
    missing = [n for n in params if n not in weights]
    if missing:
        raise ValueError(f"the snapshots lack {len(missing)} of the UNet parameters of {template} (e.g. "
                         f"{missing[0]}): they were taken from another model; pass the run's own export with "
                         "--pipeline")
    full = {**unet.state_dict(), **{n: weights[n] for n in params}}  # a REPA projector's weights are left out
    return derive_pipeline(template, out, full, command, record={"posthoc_ema": record}), record


CARD = """---
{{ card_data }}
---

# RCDM on `{{ encoder.spec }}` ({{ encoder.layer }}, {{ encoder.dim }}-d)

Trained for {{ total_steps }} optimizer steps in {{ runs | length }} run(s) on `{{ data }}` \
({{ num_images }} images x {{ num_views }} views)\
{% if runs | length > 1 %}, each continuing the previous one's weights (`--init-from`){% endif %}:

```
{% for run in runs %}# {{ run.steps }} steps
{{ run.command }}
{% endfor %}```

Full config: `rcdm_pipeline.json` -> `training`.
"""


def model_card(info: dict, cache: EmbeddingCache) -> ModelCard:
    """The export's README.md: the encoder, the data and every command behind the weights (a Hub model card)."""
    data = ModelCardData(tags=["rcdm", "diffusion", "representation-conditional"], pipeline_tag="image-to-image")
    return ModelCard.from_template(data, template_str=CARD, encoder=cache.meta["encoder"], runs=info["history"],
                                   total_steps=sum(h["steps"] for h in info["history"]), data=cache.meta["data"],
                                   num_images=len(cache.indices), num_views=len(VIEWS))
