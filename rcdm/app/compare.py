"""The Compare tab and its `/compare` endpoint: two models (backbone and projector, say) on the same image."""
from __future__ import annotations

import gradio as gr

from .checks import load_upload, sampling_spec
from .models import ModelCache, run
from .widgets import (add_examples, advanced_controls, as_files, gallery, image_input, model_dropdown, on_click,
                      progress_callback, samples_slider, with_input)


class CompareTab:
    """The same image, seed and settings through two models, side by side."""

    title = "Compare"

    def __init__(self, models: ModelCache):
        self.models = models

    def compare(self, image, model_a, model_b, num_samples, steps, guidance, seed, progress=gr.Progress()):
        """Returns one gallery per model, each the input and then its samples."""
        img = load_upload(image)
        how = sampling_spec(num_samples, steps, guidance, seed)
        galleries = []
        for i, name in enumerate((model_a, model_b)):
            out = run(self.models, name, progress_callback(progress, name, i, 2), how, images=[img])
            galleries.append(as_files(with_input(img, out)))
        return tuple(galleries)

    def build(self) -> None:
        names = self.models.names
        with gr.Row():
            with gr.Column(scale=1):
                image = image_input()
                add_examples(image)
            with gr.Column(scale=1):
                samples = samples_slider()
                button = gr.Button("Compare", variant="primary", elem_id="compare-run")
                controls = advanced_controls(self.models.sampling_defaults)
        with gr.Row():
            with gr.Column():
                model_a = model_dropdown(names, "Model A", 0)
                out_a = gallery("Model A", columns=3)
            with gr.Column():
                model_b = model_dropdown(names, "Model B", 1)
                out_b = gallery("Model B", columns=3)
        on_click(button, self.compare, [image, model_a, model_b, samples, *controls], [out_a, out_b], "compare")
