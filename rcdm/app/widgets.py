"""What the tabs share: the controls, the galleries and their items, the progress bar, the shipped examples."""
from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import gradio as gr
from PIL import Image

from rcdm.resources import pretrained_root
from rcdm.viz import thumbnail

from .checks import GUIDANCE_RANGE, MAX_SAMPLES, MAX_SEED, MAX_STEPS

OUTPUT_DIR = Path(tempfile.mkdtemp(prefix="rcdm-app-"))  # gallery PNGs; gradio copies them into its cache


def progress_callback(progress: gr.Progress, desc: str, part: int = 0, parts: int = 1):
    """A pipeline callback(step, total) that moves the page's progress bar; `part` of `parts` for multi-run jobs."""
    def callback(step, total):
        progress((part + step / total) / parts, desc=f"{desc}: step {step}/{total}")
    return callback


def as_files(items: list[tuple]) -> list[tuple]:
    """(PIL, caption) -> (PNG path, caption), each path new. Gradio caches PIL outputs under their content hash
    and rewrites that file on every request, so two concurrent requests with the same input made one client read a
    half-rewritten file; files are copied into the cache only when absent, and never rewritten."""
    out = []
    for img, caption in items:
        path = OUTPUT_DIR / f"{uuid.uuid4().hex}.png"
        img.save(path)
        out.append((str(path), caption))
    return out


def with_input(img: Image.Image, samples: list[Image.Image], label: str = "input") -> list[tuple]:
    """Gallery items: the input at the samples' resolution (what the model is asked to reproduce), then samples."""
    size = samples[0].size[0]
    return [(thumbnail(img, size), f"{label} (at {size}px)")] + [(s, f"sample {i + 1}") for i, s in enumerate(samples)]


def example_images() -> list[str]:
    """The shipped example inputs, `<pretrained_root()>/examples/*.png`; none is fine."""
    d = pretrained_root() / "examples"
    return sorted(str(p) for p in d.glob("*.png")) if d.is_dir() else []


def add_examples(image) -> None:
    files = example_images()
    if files:
        gr.Examples([[f] for f in files], inputs=[image], label="Examples")


def image_input(label: str = "Image", elem_id: str | None = None) -> gr.Image:
    return gr.Image(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"], height=220,
                    elem_id=elem_id, elem_classes=["rcdm-input"])


def on_click(button: gr.Button, fn, inputs: list, outputs, api_name: str):
    """Wire a handler with `preprocess=False`: it receives the raw payloads (the uploaded file's path, the numbers
    as sent) and checks all of them itself. Gradio's own preprocessing would otherwise decode uploads and check
    ranges first, with generic messages that name the server's temporary files. Uploads still land in gradio's
    upload folder first; a client cannot point the handler at another file."""
    return button.click(fn, inputs, outputs, api_name=api_name, preprocess=False)


def samples_slider() -> gr.Slider:
    return gr.Slider(1, MAX_SAMPLES, value=8, step=1, label="Number of samples")


def advanced_controls(defaults: dict) -> list[gr.components.Component]:
    """Steps, guidance and seed, folded away: the defaults (the first model's recorded choice) are fine for a first
    look. The widget ranges are the server's limits."""
    with gr.Accordion("Steps, guidance, seed", open=False):
        return [
            gr.Slider(1, MAX_STEPS, value=min(defaults["num_inference_steps"], MAX_STEPS), step=1, label="Steps",
                      info="sampler steps; more is slower and cleaner"),
            gr.Slider(*GUIDANCE_RANGE, value=defaults["guidance_scale"], step=0.5, label="Guidance",
                      info="1 = conditional only; above 1 samples agree more with the representation but vary less"),
            gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                      info="the same seed gives the same samples"),
        ]


def model_dropdown(names: list[str], label: str = "Model", index: int = 0) -> gr.Dropdown:
    value = names[min(index, len(names) - 1)] if names else None
    return gr.Dropdown(names, value=value, label=label, info="a pipeline directory given at start-up")


def gallery(label: str, columns: int = 5, elem_id: str | None = None) -> gr.Gallery:
    return gr.Gallery(label=label, columns=columns, height="auto", format="png", object_fit="contain",
                      elem_id=elem_id, elem_classes=["rcdm-gallery"], buttons=["download", "fullscreen"])
