"""The Interpolate tab and its `/interpolate` endpoint: samples along the path between two images' embeddings."""
from __future__ import annotations

import gradio as gr
import torch

from rcdm.analysis import interpolate_embeddings
from rcdm.viz import thumbnail

from .checks import MAX_POINTS, check_int, load_upload, sampling_spec
from .models import ModelCache, run
from .widgets import (advanced_controls, as_files, example_images, gallery, image_input, model_dropdown, on_click,
                      progress_callback)


class InterpolateTab:
    """One sample at each of several embeddings from A's to B's, all from the same noise: only the conditioning
    changes along the strip."""

    title = "Interpolate"

    def __init__(self, models: ModelCache):
        self.models = models

    def interpolate(self, image_a, image_b, model, num_points, mode, steps, guidance, seed, progress=gr.Progress()):
        """A, one sample at each of `num_points` embeddings from A's to B's (ends included), B."""
        imgs = [load_upload(image_a, "first image"), load_upload(image_b, "second image")]
        n = check_int("Points", num_points, 2, MAX_POINTS)
        if mode not in ("lerp", "slerp"):
            raise gr.Error(f"Path must be 'lerp' or 'slerp'; got {mode!r}.")
        how = sampling_spec(1, steps, guidance, seed)
        pipe, _ = self.models.get(model)
        h = pipe.encode(imgs)  # (2, D)
        path = interpolate_embeddings(h[0], h[1], n, mode)  # (n, D)
        out = run(self.models, model, progress_callback(progress, "interpolating"), how, embeddings=path,
                  same_noise=True)
        size = out[0].size[0]
        ts = torch.linspace(0, 1, n).tolist()
        return as_files([(thumbnail(imgs[0], size), "A (input)")] + [(o, f"t={t:.2f}") for o, t in zip(out, ts)]
                        + [(thumbnail(imgs[1], size), "B (input)")])

    def build(self) -> None:
        with gr.Row():
            image_a, image_b = image_input("Image A"), image_input("Image B")
            with gr.Column():
                model = model_dropdown(self.models.names)
                points = gr.Slider(2, MAX_POINTS, value=8, step=1, label="Points", info="t = 0 ... 1, ends included")
                mode = gr.Radio(["lerp", "slerp"], value="lerp", label="Path")
                button = gr.Button("Interpolate", variant="primary", elem_id="interpolate-run")
                controls = advanced_controls(self.models.sampling_defaults)
        out = gallery("A, samples along the path (the same noise at every point), B", columns=MAX_POINTS // 2 + 2)
        pair_examples(image_a, image_b)  # below the strip: the examples table is tall
        on_click(button, self.interpolate, [image_a, image_b, model, points, mode, *controls], out, "interpolate")


def pair_examples(image_a, image_b) -> None:
    """Examples for two inputs: each shipped image paired with the next one (none with fewer than two)."""
    files = example_images()
    if len(files) >= 2:
        pairs = [[a, b] for a, b in zip(files, files[1:] + files[:1])]
        gr.Examples(pairs, inputs=[image_a, image_b], label="Examples")
