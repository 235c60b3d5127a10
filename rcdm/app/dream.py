"""The Dream tab and its `/dream` endpoint: images from embeddings drawn from the model's prior p(h)."""
from __future__ import annotations

import dataclasses

import gradio as gr

from rcdm import sample
from rcdm.images import to_pil
from rcdm.sampling import prior_generator

from .checks import load_upload, sampling_spec
from .models import ModelCache
from .widgets import (advanced_controls, as_files, gallery, image_input, model_dropdown, on_click, progress_callback,
                      samples_slider)


class DreamTab:
    """What a typical representation looks like: h ~ p(h), then one image from each h. With an image and a
    strength below 1, representations near its own."""

    title = "Dream"

    def __init__(self, models: ModelCache):
        self.models = models

    def dream(self, image, model, num_samples, strength, steps, guidance, seed, progress=gr.Progress()):
        """Embeddings drawn from the model's prior p(h), then one image from each. With an image and strength < 1,
        its embedding is noised that far and denoised back by the prior: representations near this one."""
        how = sampling_spec(num_samples, steps, guidance, seed)
        ok = isinstance(strength, (int, float)) and not isinstance(strength, bool) and 0 <= strength <= 1
        if not ok:
            raise gr.Error(f"Strength must be a number from 0 to 1; got {strength!r}.")
        img = load_upload(image) if image else None
        pipe, lock = self.models.get(model)
        if pipe.prior is None:
            raise gr.Error(f"Model {model!r} has no prior p(h); train one with `rcdm train-prior --model DIR`.")
        with lock:
            h = pipe.sample_embeddings(how.num_samples, prior_generator(how.seed),  # as `rcdm sample --unconditional`
                                       near=[img] if img is not None else None, strength=float(strength))
            x = sample(pipe, h, run=dataclasses.replace(how, num_samples=1),
                       callback=progress_callback(progress, "dreaming"))
        return as_files([(im, f"dream {i + 1}") for i, im in enumerate(to_pil(x))])

    def build(self) -> None:
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown("Images from embeddings drawn from the model's prior p(h), not from an input: what a "
                            "typical representation looks like. Give an image and a strength below 1 for "
                            "representations near its own.")
                image = image_input("Optional: near this image")
                model, samples = model_dropdown(self.models.names), samples_slider()
                strength = gr.Slider(0, 1, value=1, step=0.05, label="Strength",
                                     info="with an image: 0 = its own embedding, 1 = unrelated to it")
                button = gr.Button("Dream", variant="primary", elem_id="dream-run")
                controls = advanced_controls(self.models.sampling_defaults)
            with gr.Column(scale=2):
                out = gallery("Samples from h ~ p(h)", elem_id="dream-gallery")
        on_click(button, self.dream, [image, model, samples, strength, *controls], out, "dream")
