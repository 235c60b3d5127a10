"""The Report tab and its `/report` endpoint: a small `rcdm report` of the chosen models, as a page and one file."""
from __future__ import annotations

import contextlib
import html
import os
import uuid

import gradio as gr

from rcdm.report import ReportSettings, build_report, inline_html
from rcdm.resources import pretrained_root

from .checks import MAX_REPORT_IMAGES, MAX_SEED, check_int, check_models
from .models import ModelCache
from .widgets import OUTPUT_DIR, on_click


class ReportTab:
    """`rcdm report` with `ReportSettings.small` on the server's report data (never a path a client names)."""

    title = "Report"

    def __init__(self, models: ModelCache):
        self.models = models

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

    def build(self) -> None:
        data = report_data()
        gr.Markdown("A small `rcdm report` of the chosen models: fidelity, samples, invariance profile, "
                    "interpolation, manipulation, memorization and the comparison, on "
                    + (f"`{data}`" if data else "no data (set RCDM_REPORT_DATA)") + ". It takes a minute or more; "
                    "`rcdm report` on the command line makes the full-size one.")
        with gr.Row():
            names = self.models.names
            models = gr.CheckboxGroup(names, value=names[:2], label="Models",
                                      info="side by side, the first is the base")
            images = gr.Slider(4, MAX_REPORT_IMAGES, value=16, step=1, label="Images",
                               info="fidelity references (the other sections use fewer)")
            seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
            button = gr.Button("Build report", variant="primary", elem_id="report-run")
        file = gr.File(label="The report as one HTML file (figures inlined)")
        page = gr.HTML(elem_id="report-page")
        on_click(button, self.report, [models, images, seed], [page, file], "report")


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
