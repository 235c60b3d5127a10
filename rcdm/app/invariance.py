"""The Invariance tab and its `/invariance` endpoint: samples from f(x) and from f(t(x)) for one augmentation t,
and the score of `rcdm.analysis.invariance` on this one image (1 = the representation keeps t, 0 = discards it)."""
from __future__ import annotations

import gradio as gr
import torch
from PIL import Image

from rcdm import RCDMPipeline
from rcdm.analysis import AUGMENTATIONS, AugmentParams, at_resolution, augment, encoder_view
from rcdm.analysis import invariance as invariance_analysis
from rcdm.images import to_pil

from .checks import check_augmentation, load_upload, sampling_spec
from .models import ModelCache
from .widgets import (add_examples, advanced_controls, as_files, gallery, image_input, model_dropdown, on_click,
                      progress_callback, samples_slider)

AUGMENT_PARAMS = AugmentParams()  # the analysis' default strengths, for the score and the t(x) shown alike
AUGMENT_LABELS = {"flip": "flip", "crop": "crop/scale", "hue": "hue jitter", "grayscale": "grayscale",
                  "rotation": "rotation", "blur": "blur"}


class Recorder:
    """A pipeline as rcdm.analysis uses one (an `rcdm.sampling.Sampler` with `.encoder` and `.resolution`) that keeps
    every batch of samples drawn and moves the page's progress bar: the gallery shows the very samples the score was
    computed on."""

    def __init__(self, pipe: RCDMPipeline, progress_cb):
        self.pipe, self.encoder, self.resolution = pipe, pipe.encoder, pipe.resolution
        self.sampling_defaults, self.dtype = pipe.sampling_defaults, pipe.dtype  # what `Sampling.resolve` reads
        self.progress_cb, self.batches = progress_cb, []

    def __call__(self, callback=None, **kwargs):
        out = self.pipe(callback=self.progress_cb, **kwargs)
        self.batches.append(out.images)  # (b*K, 3, R, R) in [0, 1]: the analysis asks for output_type="pt"
        return out


class InvarianceTab:
    """Encode x and an augmented t(x), and sample from both embeddings with the same noise."""

    title = "Invariance"

    def __init__(self, models: ModelCache):
        self.models = models

    def invariance(self, image, model, augmentation, num_samples, steps, guidance, seed, progress=gr.Progress()):
        """x and K samples from f(x), then t(x) and K samples from f(t(x)) (sample k of both rows from the same
        noise), the score of rcdm.analysis.invariance on this one image (None if t barely changes it) and a note."""
        img = load_upload(image)
        aug = check_augmentation(augmentation)
        how = sampling_spec(num_samples, steps, guidance, seed, batch_per_input=2)
        pipe, lock = self.models.get(model)
        rec = Recorder(pipe, progress_callback(progress, AUGMENT_LABELS.get(aug, aug)))
        with lock:
            result = invariance_analysis({model: rec}, [img], [aug], AUGMENT_PARAMS, how)
        score = result.numbers["models"][model]["scores"][aug]
        return as_files(invariance_gallery(img, aug, pipe, torch.cat(rec.batches))), score, invariance_note(aug, score)

    def build(self) -> None:
        gr.Markdown("Encode x and an augmented t(x), and sample from both embeddings with the same noise. If the "
                    "samples from f(t(x)) show t, the representation keeps t; if they look like those from f(x), it "
                    "discards it. The score is `rcdm.analysis.invariance` on this one image: a rough reading from a "
                    "few samples.")
        with gr.Row():
            with gr.Column(scale=1):
                image = image_input(elem_id="invariance-image")
                add_examples(image)
                model = model_dropdown(self.models.names)
                aug = gr.Dropdown([(AUGMENT_LABELS.get(a, a), a) for a in AUGMENTATIONS], value=AUGMENTATIONS[0],
                                  label="Augmentation t", info="at the fixed strengths of rcdm.analysis.AugmentParams")
                samples = samples_slider()
                button = gr.Button("Test invariance", variant="primary", elem_id="invariance-run")
                controls = advanced_controls(self.models.sampling_defaults)
            with gr.Column(scale=2):
                out = gallery("x, then samples from f(x); t(x), then samples from f(t(x)), the same noise in each "
                              "column", columns=samples.value + 1, elem_id="invariance-gallery")
                score = gr.Number(label="Score: 1 = t kept, 0 = t discarded", precision=3, interactive=False)
                note = gr.Markdown()
        event = on_click(button, self.invariance, [image, model, aug, samples, *controls], [out, score, note],
                         "invariance")
        # One row per condition: x or t(x), then its samples. UI only: API clients get the plain gallery.
        event.success(gallery_columns, samples, out, queue=False, api_visibility="private")


def gallery_columns(num_samples) -> gr.Gallery:
    return gr.Gallery(columns=int(num_samples) + 1)


def invariance_gallery(img: Image.Image, aug: str, pipe: RCDMPipeline, samples: torch.Tensor) -> list[tuple]:
    """Gallery items: x, its K samples, t(x), its K samples. x and t(x) are shown as the analysis makes them (the
    encoder's view, then t), at the model's resolution. `samples`: (2K, 3, R, R), K from f(x), then K from f(t(x))."""
    x = encoder_view([img], pipe.encoder)
    x, tx = to_pil(at_resolution(torch.cat([x, augment(aug, x, AUGMENT_PARAMS)]), pipe.resolution))
    pils = to_pil(samples)
    k = len(pils) // 2
    return ([(x, "x (as the encoder sees it)")] + [(im, f"from f(x) {i + 1}") for i, im in enumerate(pils[:k])]
            + [(tx, f"t(x): {AUGMENT_LABELS.get(aug, aug)}")]
            + [(im, f"from f(t(x)) {i + 1}") for i, im in enumerate(pils[k:])])


def describe_augmentation(name: str, p: AugmentParams = AUGMENT_PARAMS) -> str:
    return {"flip": "a horizontal flip", "crop": f"a centre crop of {p.crop_frac:.0%} of the side, scaled back up",
            "hue": f"a hue rotation by {360 * p.hue_turns:g} degrees", "grayscale": "grayscale",
            "rotation": f"a rotation by {p.rotation_deg:g} degrees",
            "blur": f"a Gaussian blur (sigma {p.blur_sigma:.0%} of the side)"}.get(name, name)


def invariance_note(name: str, score: float | None) -> str:
    """One line that says what the score means for this augmentation."""
    what = describe_augmentation(name)
    if score is None:
        return (f"No score: {what} barely changes this image (by the measure rcdm.analysis.invariance uses for it), "
                "so there is nothing to keep or discard; try another image or augmentation.")
    return (f"Score {score:.2f} for {what}: the samples from f(t(x)) show {score:.0%} of the change from x to t(x) "
            "(1 = the representation keeps the augmentation, 0 = it discards it).")
