"""The report page: the views of the stored sections (`views`: rows of numbers and plain sentences) written as
`report.json`, and the same rows as one static HTML page (`index.html`, the Jinja2 template `index.html.j2`) that
references its PNGs by relative path.

Every number on the page comes from `report.json` and is printed as JSON prints it, so the two always agree.
Numbers are rounded to 4 significant digits there; the section files keep full precision.
"""
from __future__ import annotations

import base64
import html
import json
import re
from importlib.resources import files
from pathlib import Path

import jinja2
import numpy as np

from .store import save_figure, write_atomic
from .views import DISCARDED, KEPT, TITLES, WHAT, build_views, num, r4

FORMAT = "rcdm-report/1"
READING_CLASS = {"kept": "kept", "discarded": "discarded", "partly kept": "partly", "uncertain": "uncertain"}


# ------------------------------------------------------------------------------------------------ figures
def invariance_figure(views: dict, path) -> str | None:
    """One bar per augmentation and model, with the 95% bootstrap intervals as error bars."""
    from matplotlib.figure import Figure

    inv = {m: v for m, v in views.get("invariance", {}).items() if "rows" in v}
    if not inv:
        return None
    stamp, done = path.with_suffix(".json"), json.dumps({m: v["rows"] for m, v in inv.items()}, sort_keys=True)
    if path.is_file() and stamp.is_file() and stamp.read_text() == done:  # drawn already from these numbers
        return "figures/invariance.png"
    augs = [r["what"] for r in next(iter(inv.values()))["rows"]]
    fig = Figure(figsize=(max(6.0, 1.2 * len(augs)), 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    width, pos = 0.8 / len(inv), np.arange(len(augs))
    for j, (m, v) in enumerate(inv.items()):
        rows = {r["what"]: r for r in v["rows"]}
        vals = np.array([np.nan if rows[a]["value"] is None else rows[a]["value"] for a in augs])
        lo = np.array([rows[a].get("interval", [np.nan] * 2)[0] for a in augs])
        hi = np.array([rows[a].get("interval", [np.nan] * 2)[1] for a in augs])
        err = np.nan_to_num(np.stack([vals - lo, hi - vals]).clip(0))
        x = pos + (j - (len(inv) - 1) / 2) * width
        ax.bar(x, np.nan_to_num(vals), width, yerr=err, capsize=3, label=m)
    ax.set(xticks=pos, xticklabels=augs, ylim=(0, 1.05), ylabel="0 = discarded ... 1 = kept",
           title="invariance profile (95% bootstrap intervals over images)")
    ax.axhline(KEPT, color="gray", lw=0.5, ls="--")
    ax.axhline(DISCARDED, color="gray", lw=0.5, ls=":")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    write_atomic(stamp, done)
    return "figures/invariance.png"


# ------------------------------------------------------------------------------------------------ page
def render_html(report: dict) -> str:
    """index.html from the report (the Jinja2 template index.html.j2 beside this module), autoescaped."""
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["num"] = num
    template = env.from_string(files(__package__).joinpath("index.html.j2").read_text(encoding="utf-8"))
    return template.render(report=report, models=list(report["models"]), TITLES=TITLES, WHAT=WHAT,
                           READING_CLASS=READING_CLASS)


def write_report(out, docs: dict, models: dict, header: dict) -> dict:
    """Write `report.json` and `index.html` (both atomically) from the stored sections; returns the report."""
    out = Path(out)
    views = build_views(docs, list(models))
    (out / "figures").mkdir(exist_ok=True)
    figures = {}
    inv = invariance_figure(views, out / "figures" / "invariance.png")
    if inv:
        figures["invariance"] = inv
    timing = {k: r4(d["seconds"]) for k, d in docs.items()}
    report = {"format": FORMAT, **header, "models": models, "sections": views, "figures": figures,
              "timing": {"sections": timing, "total_seconds": r4(sum(d["seconds"] for d in docs.values()))}}
    write_atomic(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False))
    write_atomic(out / "index.html", render_html(report))
    return report


def inline_html(out) -> str:
    """`out/index.html` with every PNG it references inlined as a data URI: one self-contained file."""
    out = Path(out)

    def inline(m):
        data = base64.b64encode((out / html.unescape(m.group(1))).read_bytes()).decode()
        return f"src='data:image/png;base64,{data}'"

    return re.sub(r"src='([^']+\.png)'", inline, (out / "index.html").read_text())
