"""The rcdm Gradio app: draw many images from one frozen embedding and see what the representation keeps.

Launch it with `rcdm app [--model DIR ...]` or `python app/app.py [--model DIR ...]`. It serves on 127.0.0.1:7860,
with no share link unless you pass `--share`. The tabs are:

- Sample: samples from one image's embedding;
- Compare: two models (for example backbone and projector) on the same image, side by side;
- Interpolate: samples along the path between two images' embeddings, with the same noise at every point;
- Invariance: samples from f(x) and from f(t(x)) for one augmentation t, and a score: does the representation
  keep t (1) or discard it (0)?
- Report: a small `rcdm report` for the chosen models, shown on the page and offered as one self-contained HTML
  file. Its images are the shipped examples, or the data spec in $RCDM_REPORT_DATA (set by whoever starts the
  server: a client never names a path).

Scripting with gradio_client
----------------------------
Every tab is also an API endpoint: `/sample`, `/compare`, `/interpolate`, `/invariance`, `/dream` and `/report`.
A gallery comes back as a list of `{"image": path, "caption": str}` dicts, with the input as the model sees it
first. The server checks the same limits as the widgets: at most 16 samples, 100 steps, guidance from 0 to 10, 16
interpolation points, one of the six augmentations, 1 to 4 distinct models and 4 to 32 images for a report, and
uploads of at most 10 MB and 4096 x 4096 pixels.

    from gradio_client import Client, handle_file

    client = Client("http://127.0.0.1:7860/")
    gallery = client.predict(handle_file("cat.png"), "rcdm-cifar10-backbone", 8, 20, 1.0, 0, api_name="/sample")
    paths = [item["image"] for item in gallery[1:]]          # gallery[0] is the input at the model's resolution

    a, b = client.predict(handle_file("cat.png"), "rcdm-cifar10-backbone", "rcdm-cifar10-projector", 8, 20, 1.0, 0,
                          api_name="/compare")             # one gallery per model, the same noise for both
    strip = client.predict(handle_file("cat.png"), handle_file("dog.png"), "rcdm-cifar10-backbone", 8, "lerp",
                           20, 1.0, 0, api_name="/interpolate")  # A, t = 0 ... 1, B
    gallery, score, note = client.predict(handle_file("cat.png"), "rcdm-cifar10-backbone", "flip", 8, 20, 1.0, 0,
                                          api_name="/invariance")  # x, 8 samples from f(x), t(x), 8 from f(t(x))
    page, html_file = client.predict(["rcdm-cifar10-backbone", "rcdm-cifar10-projector"], 16, 0,
                                     api_name="/report")   # a small `rcdm report`: the page, and it as one file

The augmentations are those of `rcdm.analysis.AUGMENTATIONS` (flip, crop, hue, grayscale, rotation, blur) at the
fixed strengths of `rcdm.analysis.AugmentParams`. The score is `rcdm.analysis.invariance` on this one image: 1 = the
samples from f(t(x)) show t as much as t(x) does (the representation keeps t), 0 = they look like the samples from
f(x) (it discards t); None when t barely changes the image, with the reason in `note`.

`client.view_api()` lists the parameters of each endpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import io
import math
import os
import tempfile
import threading
import uuid
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from rcdm import RCDMPipeline, Sampling, sample
from rcdm.analysis import AUGMENTATIONS, AugmentParams, at_resolution, augment, encoder_view, interpolate_embeddings
from rcdm.analysis import invariance as invariance_analysis
from rcdm.data import ImageError, open_image
from rcdm.flags import auto_device
from rcdm.images import to_pil
from rcdm.pipeline import DEFAULT_SAMPLING, pretrained_root, recorded_sampling, resolve_model_path, shipped_models
from rcdm.report import ReportSettings, build_report, inline_html
from rcdm.viz import thumbnail

# Server-side limits. The widgets show the same ranges, but every handler checks them again: API clients do not
# go through the widgets.
MAX_SAMPLES = 16
MAX_STEPS = 100
GUIDANCE_RANGE = (0.0, 10.0)
MAX_POINTS = 16
MAX_SEED = 2**32 - 1
MAX_PIXELS = 4096 * 4096
MAX_FILE_BYTES = 10 * 2**20
MAX_REPORT_MODELS = 4
MAX_REPORT_IMAGES = 32

AUGMENT_PARAMS = AugmentParams()  # the analysis' default strengths, for the score and the t(x) shown alike
AUGMENT_LABELS = {"flip": "flip", "crop": "crop/scale", "hue": "hue jitter", "grayscale": "grayscale",
                  "rotation": "rotation", "blur": "blur"}

OUTPUT_DIR = Path(tempfile.mkdtemp(prefix="rcdm-app-"))  # gallery PNGs; gradio copies them into its cache

DEFAULT_CONCURRENCY = 1  # one sampling job at a time: a single job already uses every core (or the whole GPU)
DEFAULT_MAX_QUEUE = 32

# Samples and inputs are small (32 px for the CIFAR-10 models): show them large, with their pixels, not a blur.
APP_CSS = """
.rcdm-gallery img, .rcdm-input img { image-rendering: pixelated; }
.rcdm-input img { width: 100%; height: 100%; object-fit: contain; }
"""

INTRO = """# RCDM: what does a representation keep?
Upload an image (or pick an example). The model encodes it with a frozen self-supervised encoder and draws several
images **from that embedding alone**. What all samples share, the representation encodes; what varies between them,
it has thrown away ([Bordes et al. 2022](https://arxiv.org/abs/2112.09164))."""


# ------------------------------------------------------------------------------------------------ models
def model_names(paths: list[Path]) -> dict[str, Path]:
    """Display name -> directory. Names are directory names, made unique with their parent when they clash."""
    names: dict[str, Path] = {}
    for p in paths:
        name = p.name if p.name not in names else f"{p.parent.name}/{p.name}"
        names[name] = p
    return names


class ModelCache:
    """Pipelines loaded once on first use and kept, keyed by directory. Only the models given at start-up can be
    chosen: a client never makes the server read a path of its choosing."""

    def __init__(self, paths: list[Path], device: str | None = None):
        self.paths = model_names(paths)
        self.device = device or auto_device()
        self._pipes: dict[Path, RCDMPipeline] = {}
        self._locks: dict[Path, threading.Lock] = {p: threading.Lock() for p in self.paths.values()}
        self._loading = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    @property
    def sampling_defaults(self) -> dict:
        """The first model's recorded steps and guidance (read from its directory, weights not loaded)."""
        return recorded_sampling(next(iter(self.paths.values()))) if self.paths else dict(DEFAULT_SAMPLING)

    def get(self, name) -> tuple[RCDMPipeline, threading.Lock]:
        """The pipeline for a model name, and the lock to hold while sampling with it. The lock is needed because
        a diffusers scheduler keeps per-call state (its timesteps), so one pipeline runs one call at a time."""
        if not isinstance(name, str) or name not in self.paths:
            raise gr.Error(f"Unknown model {name!r}. Choose one of: {', '.join(self.names) or 'none loaded'}.")
        path = self.paths[name]
        with self._loading:  # two first requests must not load the same model twice
            if path not in self._pipes:
                self._pipes[path] = self._load(name, path)
        return self._pipes[path], self._locks[path]

    def _load(self, name: str, path: Path) -> RCDMPipeline:
        try:
            pipe = RCDMPipeline.from_pretrained(path, device=self.device)
        except (ValueError, OSError, KeyError) as e:  # a broken or incompatible directory: say which and why
            raise gr.Error(f"Could not load model {name!r}: {e}") from e
        pipe.set_progress_bar_config(disable=True)  # progress goes to the web page, not the server log
        return pipe


# ------------------------------------------------------------------------------------------------ input checks
def check_int(label: str, value, lo: int, hi: int) -> int:
    """An integer in [lo, hi]; integral floats (what sliders send) are accepted."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and float(value).is_integer() and lo <= value <= hi
    if not ok:
        raise gr.Error(f"{label} must be a whole number from {lo} to {hi}; got {value!r}.")
    return int(value)


def check_guidance(value) -> float:
    lo, hi = GUIDANCE_RANGE
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and lo <= value <= hi
    if not ok:
        raise gr.Error(f"Guidance must be a number from {lo:g} to {hi:g}; got {value!r}.")
    return float(value)


def load_upload(upload, label: str = "image") -> Image.Image:
    """An uploaded file (gradio's file payload, or a path) -> RGB PIL, or a `gr.Error` that says what is wrong
    with it. The file size and the pixel count are checked before the image is decoded, so a huge upload costs
    no memory."""
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not path:
        raise gr.Error(f"No {label} given: upload one or pick an example.")
    p = Path(path)
    if not p.is_file():
        raise gr.Error(f"The {label} upload did not arrive; please upload it again.")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise gr.Error(f"The {label} file is {size / 2**20:.1f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB.")
    data = p.read_bytes()
    w, h = _header_size(data)
    if w * h > MAX_PIXELS:
        raise gr.Error(f"The {label} is {w}x{h} pixels; the limit is {MAX_PIXELS / 1e6:.1f} megapixels.")
    try:
        return open_image(data, name=f"The {label}")  # names the input, never the server's temporary path
    except ImageError as e:
        raise gr.Error(str(e)) from None


def check_augmentation(name) -> str:
    if not isinstance(name, str) or name not in AUGMENTATIONS:
        raise gr.Error(f"Augmentation must be one of: {', '.join(AUGMENTATIONS)}; got {name!r}.")
    return name


def check_models(models, known: list[str]) -> list[str]:
    """1 to MAX_REPORT_MODELS distinct model names, each one the server loaded at start-up."""
    models = [models] if isinstance(models, str) else models
    ok = isinstance(models, (list, tuple)) and 1 <= len(models) <= MAX_REPORT_MODELS \
        and all(isinstance(m, str) for m in models) and len(set(models)) == len(models)
    if not ok:
        raise gr.Error(f"Choose 1 to {MAX_REPORT_MODELS} different models; got {models!r}.")
    unknown = [m for m in models if m not in known]
    if unknown:
        raise gr.Error(f"Unknown model {unknown[0]!r}. Choose from: {', '.join(known) or 'none loaded'}.")
    return list(models)


def report_data() -> str | None:
    """The Report tab's images: $RCDM_REPORT_DATA (server-side), else the shipped examples folder, else None."""
    env = os.environ.get("RCDM_REPORT_DATA")
    if env:
        return env
    d = pretrained_root() / "examples"
    return str(d) if d.is_dir() and any(d.glob("*.png")) else None


def page_frame(page: str) -> str:
    """The report page in a sandboxed iframe: its styles stay out of the app's, and it runs no script."""
    return (f"<iframe sandbox srcdoc=\"{html.escape(page, quote=True)}\" "
            "style='width: 100%; height: 900px; border: 1px solid #ddd'></iframe>")


def _header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header alone; (0, 0) if this is no image (open_image then says why)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any failure here is reported by open_image with a clear message
        return 0, 0


# ------------------------------------------------------------------------------------------------ sampling
def progress_callback(progress: gr.Progress, desc: str, part: int = 0, parts: int = 1):
    """A pipeline callback(step, total) that moves the page's progress bar; `part` of `parts` for multi-run jobs."""
    def callback(step, total):
        progress((part + step / total) / parts, desc=f"{desc}: step {step}/{total}")
    return callback


def run(models: ModelCache, name: str, progress_cb, how: Sampling, images=None, embeddings=None,
        same_noise: bool = False) -> list[Image.Image]:
    """Sample with model `name` under its lock, seeded as everywhere in rcdm (rcdm.sampling): sample k of input i
    from (seed, i, k), so the app shows what `rcdm sample` and the analyses draw. `same_noise` gives every input
    the noise of input 0, so only the conditioning differs between them."""
    pipe, lock = models.get(name)
    with lock:
        h = pipe.encode(images) if embeddings is None else embeddings
        keys = [0] * len(h) if same_noise else None
        return to_pil(sample(pipe, h, keys, how, callback=progress_cb))


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


class Recorder:
    """A pipeline as rcdm.analysis uses one (its sampling call, `.encoder`, `.resolution`) that keeps every batch of
    samples drawn and moves the page's progress bar: the gallery shows the very samples the score was computed on."""

    def __init__(self, pipe: RCDMPipeline, progress_cb):
        self.pipe, self.encoder, self.resolution = pipe, pipe.encoder, pipe.resolution
        self.scheduler, self.sampling_defaults = pipe.scheduler, pipe.sampling_defaults  # what `Sampling` resolves
        self.progress_cb, self.batches = progress_cb, []

    def __call__(self, callback=None, **kwargs):
        out = self.pipe(callback=self.progress_cb, **kwargs)
        self.batches.append(out.images)  # (b*K, 3, R, R) in [0, 1]: the analysis asks for output_type="pt"
        return out


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


class Handlers:
    """The app's endpoints. Each checks all of its inputs itself before doing any work."""

    def __init__(self, models: ModelCache):
        self.models = models

    def sample(self, image, model, num_samples, steps, guidance, seed, progress=gr.Progress()):
        """`num_samples` images from the embedding of `image`; returns the input first, then the samples."""
        img = load_upload(image)
        how = self._check(num_samples, steps, guidance, seed)
        out = run(self.models, model, progress_callback(progress, "sampling"), how, images=[img])
        return as_files(with_input(img, out))

    def compare(self, image, model_a, model_b, num_samples, steps, guidance, seed, progress=gr.Progress()):
        """The same image, seed and settings through two models; returns one gallery per model."""
        img = load_upload(image)
        how = self._check(num_samples, steps, guidance, seed)
        galleries = []
        for i, name in enumerate((model_a, model_b)):
            out = run(self.models, name, progress_callback(progress, name, i, 2), how, images=[img])
            galleries.append(as_files(with_input(img, out)))
        return tuple(galleries)

    def interpolate(self, image_a, image_b, model, num_points, mode, steps, guidance, seed, progress=gr.Progress()):
        """One sample at each of `num_points` embeddings from A's to B's, all with the same noise."""
        imgs = [load_upload(image_a, "first image"), load_upload(image_b, "second image")]
        n = check_int("Points", num_points, 2, MAX_POINTS)
        if mode not in ("lerp", "slerp"):
            raise gr.Error(f"Path must be 'lerp' or 'slerp'; got {mode!r}.")
        how = self._check(1, steps, guidance, seed)
        pipe, _ = self.models.get(model)
        h = pipe.encode(imgs)  # (2, D)
        path = interpolate_embeddings(h[0], h[1], n, mode)  # (n, D)
        out = run(self.models, model, progress_callback(progress, "interpolating"), how, embeddings=path,
                  same_noise=True)
        size = out[0].size[0]
        ts = torch.linspace(0, 1, n).tolist()
        return as_files([(thumbnail(imgs[0], size), "A (input)")] + [(o, f"t={t:.2f}") for o, t in zip(out, ts)]
                        + [(thumbnail(imgs[1], size), "B (input)")])

    def invariance(self, image, model, augmentation, num_samples, steps, guidance, seed, progress=gr.Progress()):
        """x and K samples from f(x), then t(x) and K samples from f(t(x)) (sample k of both rows from the same
        noise), the score of rcdm.analysis.invariance on this one image (None if t barely changes it) and a note."""
        img = load_upload(image)
        aug = check_augmentation(augmentation)
        how = self._check(num_samples, steps, guidance, seed, batch_per_input=2)
        pipe, lock = self.models.get(model)
        rec = Recorder(pipe, progress_callback(progress, AUGMENT_LABELS.get(aug, aug)))
        with lock:
            result = invariance_analysis({model: rec}, [img], [aug], AUGMENT_PARAMS, how)
        score = result.numbers["models"][model]["scores"][aug]
        return as_files(invariance_gallery(img, aug, pipe, torch.cat(rec.batches))), score, invariance_note(aug, score)

    def dream(self, image, model, num_samples, strength, steps, guidance, seed, progress=gr.Progress()):
        """Embeddings drawn from the model's prior p(h), then one image from each. With an image and strength < 1,
        its embedding is noised that far and denoised back by the prior: representations near this one."""
        how = self._check(num_samples, steps, guidance, seed)
        ok = isinstance(strength, (int, float)) and not isinstance(strength, bool) and 0 <= strength <= 1
        if not ok:
            raise gr.Error(f"Strength must be a number from 0 to 1; got {strength!r}.")
        img = load_upload(image) if image else None
        pipe, lock = self.models.get(model)
        if pipe.prior is None:
            raise gr.Error(f"Model {model!r} has no prior p(h); train one with `rcdm train-prior --model DIR`.")
        with lock:
            h = pipe.sample_embeddings(how.samples_per_image, torch.Generator().manual_seed(how.seed),
                                       near=[img] if img is not None else None, strength=float(strength))
            x = sample(pipe, h, run=dataclasses.replace(how, samples_per_image=1),
                       callback=progress_callback(progress, "dreaming"))
        return as_files([(im, f"dream {i + 1}") for i, im in enumerate(to_pil(x))])

    def report(self, models, num_images, seed, progress=gr.Progress()):
        """A small `rcdm report` (ReportSettings.small) of the chosen models on the server's report data; returns
        the page with its figures inlined, and the same page as one HTML file."""
        names = check_models(models, self.models.names)
        n = check_int("Images", num_images, 4, MAX_REPORT_IMAGES)
        seed = check_int("Seed", seed, 0, MAX_SEED)
        data = report_data()
        if data is None:
            raise gr.Error("No report data: set RCDM_REPORT_DATA to a data spec before starting the app, or ship "
                           "example images in pretrained/examples.")
        loaded = {name: self.models.get(name) for name in names}
        out = OUTPUT_DIR / f"report-{uuid.uuid4().hex}"
        command = f"rcdm app, Report tab: models {', '.join(names)}, {n} images, seed {seed}, data {data}"
        with contextlib.ExitStack() as stack:
            for name in sorted(loaded):  # one fixed order: two reports never wait on each other's locks
                stack.enter_context(loaded[name][1])
            try:
                build_report({k: p for k, (p, _) in loaded.items()}, data, out,
                             ReportSettings.small(num_images=n, seed=seed),
                             {k: str(self.models.paths[k]) for k in names}, command, progress=False,
                             callback=lambda f, desc: progress(f, desc=desc))
            except (ValueError, OSError) as e:  # unreadable report data: say what, not a traceback
                raise gr.Error(f"The report could not be built: {e}") from None
        page = inline_html(out)
        single = out / "report.html"
        single.write_text(page)
        return page_frame(page), str(single)

    @staticmethod
    def _check(num_samples, steps, guidance, seed, batch_per_input: int = 1) -> Sampling:
        """The checked widgets as a sampling spec; the sampler is the model's recorded one. One batch holds
        `batch_per_input` inputs' samples, so a job is one sampler call and one progress bar pass."""
        k = check_int("Number of samples", num_samples, 1, MAX_SAMPLES)
        return Sampling(samples_per_image=k, steps=check_int("Steps", steps, 1, MAX_STEPS),
                        guidance=check_guidance(guidance), seed=check_int("Seed", seed, 0, MAX_SEED),
                        batch_size=max(k * batch_per_input, MAX_POINTS))


# ------------------------------------------------------------------------------------------------ layout
def example_images() -> list[str]:
    """The shipped example inputs, `pretrained/examples/*.png`; none is fine."""
    d = pretrained_root() / "examples"
    return sorted(str(p) for p in d.glob("*.png")) if d.is_dir() else []


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


def add_examples(image) -> None:
    files = example_images()
    if files:
        gr.Examples([[f] for f in files], inputs=[image], label="Examples")


def sample_tab(h: Handlers) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input(elem_id="sample-image")
            add_examples(image)
            model, samples = model_dropdown(h.models.names), samples_slider()
            button = gr.Button("Generate", variant="primary", elem_id="sample-generate")
            controls = advanced_controls(h.models.sampling_defaults)
        with gr.Column(scale=2):
            out = gallery("Input, then samples from its embedding", elem_id="sample-gallery")
    on_click(button, h.sample, [image, model, samples, *controls], out, "sample")


def compare_tab(h: Handlers) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input()
            add_examples(image)
        with gr.Column(scale=1):
            samples = samples_slider()
            button = gr.Button("Compare", variant="primary", elem_id="compare-run")
            controls = advanced_controls(h.models.sampling_defaults)
    with gr.Row():
        with gr.Column():
            model_a = model_dropdown(h.models.names, "Model A", 0)
            out_a = gallery("Model A", columns=3)
        with gr.Column():
            model_b = model_dropdown(h.models.names, "Model B", 1)
            out_b = gallery("Model B", columns=3)
    on_click(button, h.compare, [image, model_a, model_b, samples, *controls], [out_a, out_b], "compare")


def interpolate_tab(h: Handlers) -> None:
    with gr.Row():
        image_a, image_b = image_input("Image A"), image_input("Image B")
        with gr.Column():
            model = model_dropdown(h.models.names)
            points = gr.Slider(2, MAX_POINTS, value=8, step=1, label="Points", info="t = 0 ... 1, ends included")
            mode = gr.Radio(["lerp", "slerp"], value="lerp", label="Path")
            button = gr.Button("Interpolate", variant="primary", elem_id="interpolate-run")
            controls = advanced_controls(h.models.sampling_defaults)
    out = gallery("A, samples along the path (the same noise at every point), B", columns=MAX_POINTS // 2 + 2)
    pair_examples(image_a, image_b)  # below the strip: the examples table is tall
    on_click(button, h.interpolate, [image_a, image_b, model, points, mode, *controls], out, "interpolate")


def pair_examples(image_a, image_b) -> None:
    """Examples for two inputs: each shipped image paired with the next one (none with fewer than two)."""
    files = example_images()
    if len(files) >= 2:
        pairs = [[a, b] for a, b in zip(files, files[1:] + files[:1])]
        gr.Examples(pairs, inputs=[image_a, image_b], label="Examples")


def invariance_tab(h: Handlers) -> None:
    gr.Markdown("Encode x and an augmented t(x), and sample from both embeddings with the same noise. If the samples "
                "from f(t(x)) show t, the representation keeps t; if they look like those from f(x), it discards "
                "it. The score is `rcdm.analysis.invariance` on this one image: a rough reading from a few samples.")
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input(elem_id="invariance-image")
            add_examples(image)
            model = model_dropdown(h.models.names)
            aug = gr.Dropdown([(AUGMENT_LABELS.get(a, a), a) for a in AUGMENTATIONS], value=AUGMENTATIONS[0],
                              label="Augmentation t", info="at the fixed strengths of rcdm.analysis.AugmentParams")
            samples = samples_slider()
            button = gr.Button("Test invariance", variant="primary", elem_id="invariance-run")
            controls = advanced_controls(h.models.sampling_defaults)
        with gr.Column(scale=2):
            out = gallery("x, then samples from f(x); t(x), then samples from f(t(x)), the same noise in each column",
                          columns=samples.value + 1, elem_id="invariance-gallery")
            score = gr.Number(label="Score: 1 = t kept, 0 = t discarded", precision=3, interactive=False)
            note = gr.Markdown()
    event = on_click(button, h.invariance, [image, model, aug, samples, *controls], [out, score, note], "invariance")
    # One row per condition: x or t(x), then its samples. UI only: API clients get the plain gallery.
    event.success(gallery_columns, samples, out, queue=False, api_visibility="private")


def gallery_columns(num_samples) -> gr.Gallery:
    return gr.Gallery(columns=int(num_samples) + 1)


def dream_tab(h: Handlers) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown("Images from embeddings drawn from the model's prior p(h), not from an input: what a typical "
                        "representation looks like. Give an image and a strength below 1 for representations near "
                        "its own.")
            image = image_input("Optional: near this image")
            model, samples = model_dropdown(h.models.names), samples_slider()
            strength = gr.Slider(0, 1, value=1, step=0.05, label="Strength",
                                 info="with an image: 0 = its own embedding, 1 = unrelated to it")
            button = gr.Button("Dream", variant="primary", elem_id="dream-run")
            controls = advanced_controls(h.models.sampling_defaults)
        with gr.Column(scale=2):
            out = gallery("Samples from h ~ p(h)", elem_id="dream-gallery")
    on_click(button, h.dream, [image, model, samples, strength, *controls], out, "dream")


def report_tab(h: Handlers) -> None:
    data = report_data()
    gr.Markdown("A small `rcdm report` of the chosen models: fidelity, samples, invariance profile, interpolation, "
                "manipulation, memorization and the comparison, on "
                + (f"`{data}`" if data else "no data (set RCDM_REPORT_DATA)") + ". It takes a minute or more; "
                "`rcdm report` on the command line makes the full-size one.")
    with gr.Row():
        names = h.models.names
        models = gr.CheckboxGroup(names, value=names[:2], label="Models", info="side by side, the first is the base")
        images = gr.Slider(4, MAX_REPORT_IMAGES, value=16, step=1, label="Images",
                           info="fidelity references (the other sections use fewer)")
        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
        button = gr.Button("Build report", variant="primary", elem_id="report-run")
    file = gr.File(label="The report as one HTML file (figures inlined)")
    page = gr.HTML(elem_id="report-page")
    on_click(button, h.report, [models, images, seed], [page, file], "report")


TABS = [("Sample", sample_tab), ("Compare", compare_tab), ("Interpolate", interpolate_tab),
        ("Invariance", invariance_tab), ("Dream", dream_tab), ("Report", report_tab)]


def build_app(model_paths: list[str] | None = None, device: str | None = None) -> gr.Blocks:
    """The app's Blocks. `model_paths`: pipeline directories (or shipped names); None = every shipped model."""
    paths = [resolve_model_path(p) for p in model_paths] if model_paths else shipped_models()
    handlers = Handlers(ModelCache(paths, device))
    with gr.Blocks(title="RCDM") as demo:
        gr.Markdown(INTRO)
        if not paths:
            gr.Markdown(f"**No model found** in `{pretrained_root()}`: start the app with `--model DIR`.")
        with gr.Tabs():
            for title, build in TABS:
                with gr.Tab(title):
                    build(handlers)
    demo.rcdm_models = handlers.models  # for warm-up and tests
    return demo


def launch_app(model_paths: list[str] | None = None, host: str = "127.0.0.1", port: int | None = 7860,
               share: bool = False, concurrency: int = DEFAULT_CONCURRENCY, max_queue: int = DEFAULT_MAX_QUEUE,
               warm: bool = True, **launch_kwargs):
    """Build, queue and serve the app; returns the running Blocks (`.local_url`, `.close()`). Binds `host`
    (loopback by default) and makes a public link only with `share`. Blocks unless `prevent_thread_lock=True`."""
    demo = build_app(model_paths)
    if warm and demo.rcdm_models.names:  # load the first model now: a broken one fails at start, not on a click
        try:
            demo.rcdm_models.get(demo.rcdm_models.names[0])
        except gr.Error as e:
            raise ValueError(e.message) from None  # the CLI prints ValueErrors as one line, without a traceback
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_BYTES, css=APP_CSS,
                footer_links=["api", "settings"], **launch_kwargs)
    return demo


def main(argv=None) -> None:
    from rcdm.appcmd import add_app_arguments

    parser = argparse.ArgumentParser(description="Serve the RCDM Gradio app.")
    add_app_arguments(parser)
    args = parser.parse_args(argv)
    try:
        launch_app(args.model, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency,
                   max_queue=args.max_queue)
    except (ValueError, OSError) as e:  # a bad --model or a busy port: one clear line, as `rcdm app` prints it
        parser.exit(2, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
