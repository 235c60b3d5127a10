"""The app's Blocks, assembled from its tabs; `launch_app` serves them (loopback, no share link by default)."""
from __future__ import annotations

import argparse

import gradio as gr

from rcdm.pipeline import resolve_model_path, shipped_models
from rcdm.resources import pretrained_root

from .checks import MAX_FILE_BYTES
from .compare import CompareTab
from .dream import DreamTab
from .flags import DEFAULT_CONCURRENCY, DEFAULT_MAX_QUEUE, add_app_arguments
from .interpolate import InterpolateTab
from .invariance import InvarianceTab
from .models import ModelCache
from .report import ReportTab
from .sample import SampleTab

TABS = [SampleTab, CompareTab, InterpolateTab, InvarianceTab, DreamTab, ReportTab]

# Samples and inputs are small (32 px for the CIFAR-10 models): show them large, with their pixels, not a blur.
APP_CSS = """
.rcdm-gallery img, .rcdm-input img { image-rendering: pixelated; }
.rcdm-input img { width: 100%; height: 100%; object-fit: contain; }
"""

INTRO = """# RCDM: what does a representation keep?
Upload an image (or pick an example). The model encodes it with a frozen self-supervised encoder and draws several
images **from that embedding alone**. What all samples share, the representation encodes; what varies between them,
it has thrown away ([Bordes et al. 2022](https://arxiv.org/abs/2112.09164))."""


def build_app(model_paths: list[str] | None = None, device: str | None = None) -> gr.Blocks:
    """The app's Blocks. `model_paths`: pipeline directories (or shipped names); None = every shipped model."""
    paths = [resolve_model_path(p) for p in model_paths] if model_paths else shipped_models()
    models = ModelCache(paths, device)
    with gr.Blocks(title="RCDM") as demo:
        gr.Markdown(INTRO)
        if not paths:
            gr.Markdown(f"**No model found** in `{pretrained_root()}`: start the app with `--model DIR`.")
        with gr.Tabs():
            for make_tab in TABS:
                tab = make_tab(models)
                with gr.Tab(tab.title):
                    tab.build()
    demo.rcdm_models = models  # for warm-up and tests
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
    """`python app/app.py [flags]`: the flags of `rcdm app`."""
    parser = argparse.ArgumentParser(description="Serve the RCDM Gradio app.")
    add_app_arguments(parser)
    args = parser.parse_args(argv)
    try:
        launch_app(args.model, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency,
                   max_queue=args.max_queue)
    except (ValueError, OSError) as e:  # a bad --model or a busy port: one clear line, as `rcdm app` prints it
        parser.exit(2, f"{parser.prog}: error: {e}\n")
