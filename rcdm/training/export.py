"""The end of a run: a pipeline with the EMA weights (also what the grids sample), its `save_pretrained` export, the
lineage of runs behind its weights, and the model card."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData

from ..cache import VIEWS, EmbeddingCache
from ..choices import DEFAULT_SAMPLING
from ..pipeline import RCDMPipeline, read_meta
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
