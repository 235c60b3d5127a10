"""The Sample tab and its `/sample` endpoint: samples from one image's embedding."""
from __future__ import annotations

import gradio as gr

from .checks import load_upload, sampling_spec
from .models import ModelCache, run
from .widgets import (add_examples, advanced_controls, as_files, gallery, image_input, model_dropdown, on_click,
                      progress_callback, samples_slider, with_input)


class SampleTab:
    """`num_samples` images from the embedding of one image, shown after the input."""

    title = "Sample"

    def __init__(self, models: ModelCache):
        self.models = models

    def sample(self, image, model, num_samples, steps, guidance, seed, progress=gr.Progress()):
        """`num_samples` images from the embedding of `image`; returns the input first, then the samples."""
        img = load_upload(image)
        how = sampling_spec(num_samples, steps, guidance, seed)
        out = run(self.models, model, progress_callback(progress, "sampling"), how, images=[img])
        return as_files(with_input(img, out))

    def build(self) -> None:
        with gr.Row():
            with gr.Column(scale=1):
                image = image_input(elem_id="sample-image")
                add_examples(image)
                model, samples = model_dropdown(self.models.names), samples_slider()
                button = gr.Button("Generate", variant="primary", elem_id="sample-generate")
                controls = advanced_controls(self.models.sampling_defaults)
            with gr.Column(scale=2):
                out = gallery("Input, then samples from its embedding", elem_id="sample-gallery")
        on_click(button, self.sample, [image, model, samples, *controls], out, "sample")
