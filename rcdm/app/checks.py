"""Server-side limits, and the checks every endpoint runs on its raw inputs. The widgets show the same ranges, but
every handler checks them again: API clients do not go through the widgets."""
from __future__ import annotations

import io
import math
from pathlib import Path

import gradio as gr
from PIL import Image

from rcdm import Sampling
from rcdm.analysis import AUGMENTATIONS
from rcdm.data import ImageError, open_image

MAX_SAMPLES = 16
MAX_STEPS = 100
GUIDANCE_RANGE = (0.0, 10.0)
MAX_POINTS = 16
MAX_SEED = 2**32 - 1
MAX_PIXELS = 4096 * 4096
MAX_FILE_BYTES = 10 * 2**20
MAX_REPORT_MODELS = 4
MAX_REPORT_IMAGES = 32


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


def sampling_spec(num_samples, steps, guidance, seed, batch_per_input: int = 1) -> Sampling:
    """The checked widgets as a sampling spec; the sampler is the model's recorded one. One batch holds
    `batch_per_input` inputs' samples, so a job is one sampler call and one progress bar pass."""
    k = check_int("Number of samples", num_samples, 1, MAX_SAMPLES)
    return Sampling(num_samples=k, num_inference_steps=check_int("Steps", steps, 1, MAX_STEPS),
                    guidance_scale=check_guidance(guidance), seed=check_int("Seed", seed, 0, MAX_SEED),
                    batch_size=max(k * batch_per_input, MAX_POINTS))


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


def _header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header alone; (0, 0) if this is no image (open_image then says why)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any failure here is reported by open_image with a clear message
        return 0, 0


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
