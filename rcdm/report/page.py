"""The report page: the stored sections turned into rows of numbers and plain sentences (`report.json`), and the
same rows as one static HTML page (`index.html`) that references its PNGs by relative path.

Every number on the page comes from `report.json` and is printed as JSON prints it, so the two always agree.
Numbers are rounded to 4 significant digits there; the section files keep full precision.
"""
from __future__ import annotations

import html
import json

import numpy as np

from .store import save_figure, write_atomic

FORMAT = "rcdm-report/1"
KEPT, DISCARDED = 0.5, 0.2  # invariance readings: >= KEPT "kept", < DISCARDED "discarded", else "partly kept"

TITLES = {"fidelity": "Fidelity", "samples": "Samples", "invariance": "Invariance profile",
          "interpolation": "Interpolation", "manipulation": "Manipulation", "memorization": "Memorization (Déjà vu)",
          "comparison": "Comparison"}
WHAT = {
    "fidelity": "One sample per draw from the embedding of each reference image, re-encoded by the same encoder. "
                "Rank: where the sample's source ranks among all references by cosine distance (1 = closest; "
                "top-1/top-5 = share of samples at rank 1 / at most 5). FD: Fréchet distance between samples and "
                "references in feature space, beside the FD between two halves of the real references (what a "
                "perfect sampler would reach at about that size). Diversity: mean pairwise per-pixel RMS and "
                "feature cosine distance among the samples of one image. Class agreement: a kNN classifier on "
                "the bank labels each sample; the real images' kNN accuracy is the ceiling (rcdm.metrics).",
    "samples": "Each row: the input as the model sees it, its samples, and the per-pixel standard deviation among "
               "them (dark: every sample agrees, so the representation keeps it; bright: it does not).",
    "invariance": "Samples from f(t(x)) against samples from f(x), with the same noise: 1 = the samples show the "
                  "augmentation t as much as t(x) does (the representation keeps it), 0 = not at all (it "
                  "discards it). Intervals: 95% bootstrap over images (rcdm.analysis.invariance).",
    "interpolation": "Samples along the straight line from f(A) to f(B), the same noise at every point.",
    "manipulation": "The dimensions that the source's nearest neighbours in the bank all use are zeroed, or "
                    "transplanted from the target (rcdm.analysis.manipulate).",
    "memorization": "Déjà vu: sample from the embedding of the background only (the centre box hidden) and ask "
                    "whether the hidden object's class comes back, for training images vs held-out ones "
                    "(rcdm.analysis.memorization). Intervals: 95% Wilson, n = images.",
    "comparison": "Every model on the same inputs with the same noise, and the largest differences between the "
                  "models in the sections above.",
}


# ------------------------------------------------------------------------------------------------ numbers
def r4(v):
    """Round for display: 4 significant digits from 1 up, 3 decimals below (2 significant digits for what would
    round to 0); ints and None unchanged."""
    if v is None or isinstance(v, (bool, int)):
        return v
    v = float(v)
    if abs(v) >= 1 or not np.isfinite(v):
        return float(f"{v:.4g}")
    return round(v, 3) if round(v, 3) != 0 or v == 0 else float(f"{v:.2g}")


def row(what: str, value, n: int | None, interval=None, unit: str = "images", beside: str = "",
        no_interval: str = "") -> dict:
    """One line of numbers: the value, its 95% interval (or why there is none) and its sample size."""
    out = {"what": what, "value": r4(value), "n": n, "unit": unit}
    if interval is not None:
        out["interval"] = [r4(interval[0]), r4(interval[1])]
    else:
        out["no_interval"] = no_interval or "no interval"
    if beside:
        out["beside"] = beside
    return out


def pct(v):
    return None if v is None else 100 * v


def reading(score, interval=None) -> str:
    """Kept, partly kept or discarded; "uncertain" when the interval reaches from discarded to kept."""
    if score is None:
        return "not measurable"
    if interval is not None and interval[0] < DISCARDED and interval[1] >= KEPT:
        return "uncertain"
    return "kept" if score >= KEPT else "discarded" if score < DISCARDED else "partly kept"


def _s(v) -> str:
    """A number as the page prints it: exactly as in report.json."""
    return json.dumps(r4(v))


# ------------------------------------------------------------------------------------------------ sections
def fidelity_view(n: dict) -> dict:
    r, ci, fd, d, ca = n["rank"], n["rank_ci"], n["fd"], n["diversity"], n["class_agreement"]
    N = n["num_images"]
    rows = [row("mean rank", r["mean"], N, ci["mean"], beside=f"chance {_s(r['chance_mean'])}"),
            row("top-1 %", r["top1_pct"], N, ci["top1_pct"], beside=f"chance {_s(100 / N)}"),
            row("top-5 %", r["top5_pct"], N, ci["top5_pct"], beside=f"chance {_s(min(100.0, 500 / N))}"),
            row("FD samples vs real", fd["samples_vs_real"], fd["num_samples"], unit="samples",
                no_interval="one statistic of the whole set; read it against the real-half calibration"),
            row("FD real half vs half (calibration)", fd["real_half_vs_half"], fd["num_real"], unit="real images",
                no_interval="the calibration itself")]
    div_why = "evaluate reports the mean over images only"
    if d["pixel_rms"] is not None:
        rows += [row("pixel diversity (RMS)", d["pixel_rms"], N, no_interval=div_why),
                 row("feature diversity (cosine)", d["feature_cosine"], N, no_interval=div_why)]
    text = [(f"A sample is closer to its own source than to any of the other {N - 1} references "
             f"{_s(r['top1_pct'])}% of the time (mean rank {_s(r['mean'])}, chance {_s(r['chance_mean'])}).")]
    cal, f = fd["real_half_vs_half"], fd["samples_vs_real"]
    if cal is not None:
        verdict = ("no further from the real images than one half of them is from the other" if f <= cal else
                   "about as realistic as real images" if f <= 1.5 * cal else "less realistic than real images")
        text.append(f"FD {_s(f)} ({fd['num_samples']} samples vs {fd['num_real']} real images) against {_s(cal)} "
                    f"between two halves of the real images (FD grows as sets shrink): in this feature space the "
                    f"samples are {verdict}.")
    if "skipped" in ca:
        rows.append({"what": "class agreement", "skipped": ca["skipped"]})
    else:
        rows += [row("class agreement %", pct(ca["samples"]), N, _pct(ca["samples_ci"]), beside="Wilson, n = images"),
                 row("real-image ceiling %", pct(ca["real"]), N, _pct(ca["real_ci"]),
                     beside=f"kNN k={ca['k']} on {ca['num_train']} bank images")]
        text.append(f"The kNN class of a sample is its source's class {_s(pct(ca['samples']))}% of the time, "
                    f"against {_s(pct(ca['real']))}% for the real images themselves.")
    if "accuracy_samples" in n.get("classifier", {}):  # only when a classifier was given
        rows += classifier_rows(n["classifier"], N, text)
    return {"rows": rows, "sentences": text[:1] + [" ".join(text[1:])] if len(text) > 1 else text}


def classifier_rows(c: dict, n: int, text: list) -> list[dict]:
    """The independent classifier's rows (rcdm.metrics definition 5), and a sentence appended to `text`."""
    text.append(f"An independent classifier labels {_s(pct(c['accuracy_samples']))}% of the samples with their "
                f"source's class, against {_s(pct(c['accuracy_sources']))}% of the sources themselves.")
    return [row("classifier: samples of the source's class %", pct(c["accuracy_samples"]), n,
                _pct(c["samples_ci"]), beside="Wilson, n = images"),
            row("classifier: accuracy on the sources %", pct(c["accuracy_sources"]), n, _pct(c["sources_ci"])),
            row("classifier FD samples vs sources", c["fd"], c["num_samples"], unit="samples",
                no_interval="one statistic of the whole set; read it against real vs real"),
            row("classifier FD real vs sources", c["fd_real"], c["num_real"], unit="real images",
                no_interval="the calibration itself")]


def _pct(ci):
    return None if ci is None else [100 * ci[0], 100 * ci[1]]


def samples_view(n: dict) -> dict:
    N, d = n["num_images"], n["diversity"]
    rows = [row("mean per-pixel std", n["mean_pixel_std"], N, n["mean_pixel_std_ci"]),
            row("pixel diversity (RMS)", d["pixel_rms"], N, no_interval="spread reports the mean only"),
            row("feature diversity (cosine)", d["feature_cosine"], N, no_interval="spread reports the mean only")]
    k = n["sampling"].get("num_samples", n["sampling"].get("samples_per_image"))  # the latter: stored before issue 34
    text = [(f"The {k} samples of one input differ by {_s(d['pixel_rms'])} RMS per pixel on average "
             "(0 = identical, 1 = black against white); what stays the same across a row is what the "
             "representation keeps.")]
    return {"rows": rows, "sentences": text}


def invariance_view(n: dict) -> dict:
    N, scores, ci = n["num_images"], n["scores"], n["scores_ci"]
    rows = []
    for a, v in scores.items():
        rr = row(a, v, N, ci[a], no_interval="the augmentation barely changes these images")
        rr["reading"] = reading(v, ci[a])
        rows.append(rr)
    groups = {}
    for a, v in scores.items():
        groups.setdefault(reading(v, ci[a]), []).append(f"{a} ({_s(v)})")
    text = [" ".join(f"{what.capitalize()}: {', '.join(groups[what])}." for what in
                     ("kept", "partly kept", "discarded", "uncertain", "not measurable") if what in groups)
            + f" (1 = kept, 0 = discarded; {N} images.)"]
    return {"rows": rows, "sentences": text}


def interpolation_view(n: dict) -> dict:
    lerp, t = n["lerp"], n["t"]
    to_a, to_b = lerp["cos_samples_to_a"], lerp["cos_samples_to_b"]
    rows = [row("cos(f(A), f(B))", n["cos_a_b"], 1, unit="pair", no_interval="one pair of images"),
            row("cos(sample at t=0, f(A))", to_a[0], 1, unit="pair", no_interval="one pair of images"),
            row("cos(sample at t=1, f(B))", to_b[-1], 1, unit="pair", no_interval="one pair of images")]
    cross = next((ti for ti, a, b in zip(t, to_a, to_b) if b > a), None)
    text = [f"The samples' embeddings go from cos {_s(to_a[0])} to f(A) at t = 0 to cos {_s(to_b[-1])} to f(B) at "
            "t = 1" + (f", and are closer to B than to A from t = {_s(cross)} on." if cross is not None
                       else ", but never get closer to B than to A.")]
    return {"rows": rows, "sentences": text}


def manipulation_view(n: dict) -> dict:
    c = n["conditions"]
    rows = [row("dims common to the neighbours", n["num_common"], 1, unit="image", no_interval="one source image",
                beside=f"of {n['dim']}, k = {n['k']} neighbours")]
    for cond in ("original", "zeroed", "transplanted"):
        rows.append(row(f"{cond}: cos(samples, f(source))", c[cond]["cos_samples_to_source"], 1, unit="image",
                        no_interval="one source image"))
        rows.append(row(f"{cond}: cos(samples, f(target))", c[cond]["cos_samples_to_target"], 1, unit="image",
                        no_interval="one source image"))
    text = [(f"Zeroing the {n['num_common']} of {n['dim']} dimensions shared by the source's {n['k']} nearest "
             f"neighbours moves the samples' cosine to the source from {_s(c['original']['cos_samples_to_source'])} "
             f"to {_s(c['zeroed']['cos_samples_to_source'])}; transplanting them from the target moves the cosine to "
             f"the target from {_s(c['original']['cos_samples_to_target'])} to "
             f"{_s(c['transplanted']['cos_samples_to_target'])}.")]
    if n["num_common"] == n["dim"]:
        text.append("Every dimension is common to the neighbours (a dense embedding), so 'zeroed' samples from the "
                    "zero vector and 'transplanted' from the target's own embedding.")
    return {"rows": rows, "sentences": text}


def memorization_view(n: dict) -> dict:
    rows, tr, te = [], n["train"], n["test"]
    for key, what in (("knn", "samples (kNN mode) show the hidden class %"),
                      ("patch", "samples (patch mode) show the hidden class %"),
                      ("patch_knn_accuracy", "kNN label of the background crop is the hidden class %")):
        for split, d in (("train", tr), ("held-out", te)):
            rows.append(row(f"{split}: {what}", pct(d[key]), d["num_images"], _pct(d["ci"][key]),
                            beside="Wilson, n = images"))
    key = "knn"
    overlap = not (tr["ci"][key][0] > te["ci"][key][1] or te["ci"][key][0] > tr["ci"][key][1])
    text = [f"From the background alone, samples show the hidden class for {_s(pct(tr[key]))}% of training images "
            f"and {_s(pct(te[key]))}% of held-out ones (chance {_s(pct(n['chance']))}%). "
            + ("The intervals overlap, so at this sample size there is no evidence of memorization."
               if overlap else "The intervals do not overlap: the model recalls training images it saw.")]
    return {"rows": rows, "sentences": text}


VIEWS = {"fidelity": fidelity_view, "samples": samples_view, "invariance": invariance_view,
         "interpolation": interpolation_view, "manipulation": manipulation_view, "memorization": memorization_view}


def comparison_view(doc: dict, views: dict) -> dict:
    """compare's rank and diversity per model, and a table of the largest differences in the other sections."""
    n = doc["numbers"]
    models = list(n["models"])
    rows = []
    for name, m in n["models"].items():
        rows.append(row(f"{name}: mean rank among the {n['num_images']} inputs", m["rank"]["mean"], n["num_images"],
                        no_interval="a handful of inputs; see Fidelity for intervals"))
        if m["diversity"]["pixel_rms"] is not None:
            rows.append(row(f"{name}: pixel diversity (RMS)", m["diversity"]["pixel_rms"], n["num_images"],
                            no_interval="a handful of inputs; see Samples"))
    diffs = differences(views, models)
    firsts = {}
    for d in diffs:
        firsts.setdefault(d["section"], d["sentence"])
    return {"rows": rows, "differences": diffs,
            "sentences": list(firsts.values())[:2] or ["The models agree on every number compared."]}


def differences(views: dict, models: list[str], per_section: int = 4) -> list[dict]:
    """The numbers shown for every model (matched by row name) where the first two models differ most: per
    section (invariance, fidelity, memorization) the `per_section` largest differences, absolute for invariance
    scores (on 0 ... 1), relative to the larger value otherwise. FD and feature diversity are left out: each model
    measures them in its own encoder's space, so they do not compare across models."""
    a, b = models[0], models[1]
    out = []
    for section in ("invariance", "fidelity", "memorization"):
        per_model = views.get(section, {})
        if not all(m in per_model and "rows" in per_model[m] for m in models):
            continue
        table = {m: {r["what"]: r for r in per_model[m]["rows"] if r.get("value") is not None
                     and not r["what"].startswith(("FD", "feature diversity"))} for m in models}
        found = []
        for what in table[a]:
            rows = [table[m].get(what) for m in models]
            if any(r is None for r in rows) or rows[0]["value"] == rows[1]["value"]:
                continue
            values = [r["value"] for r in rows]
            diff = values[1] - values[0]
            size = abs(diff) if section == "invariance" else abs(diff) / max(abs(values[0]), abs(values[1]))
            verb = "keeps" if section == "invariance" else "has"
            overlap = all("interval" in r for r in rows[:2]) and not (
                rows[0]["interval"][0] > rows[1]["interval"][1] or rows[1]["interval"][0] > rows[0]["interval"][1])
            found.append((size, {"section": section, "what": what, "values": dict(zip(models, values)),
                                 "difference": r4(diff), "intervals_overlap": overlap,
                                 "sentence": f"{a} {verb} {what} {_s(values[0])} while {b} {verb} {_s(values[1])}"
                                             + (" (their 95% intervals overlap)." if overlap else ".")}))
        found.sort(key=lambda f: -f[0])
        out += [d for _, d in found[:per_section]]
    return out


def build_views(docs: dict, models: list[str]) -> dict:
    """{section: {model: view}} for the per-model sections, and the comparison."""
    views = {}
    for section, fn in VIEWS.items():
        for m in models:
            doc = docs.get(f"{section}/{m}")
            if doc is None:
                continue
            v = {"skipped": doc["numbers"]["skipped"]} if "skipped" in doc["numbers"] else fn(doc["numbers"])
            v["figures"] = list(doc["figures"].values())
            views.setdefault(section, {})[m] = v
    doc = docs.get("comparison")
    if doc is not None:
        views["comparison"] = {"skipped": doc["numbers"]["skipped"]} if "skipped" in doc["numbers"] else {
            **comparison_view(doc, views), "figures": list(doc["figures"].values())}
    return views


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
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
.what { color: #555; font-size: .92em; max-width: 60em; }
.models { display: grid; gap: 1.2em; grid-template-columns: repeat(var(--cols), minmax(0, 1fr)); }
.model { border: 1px solid #e3e3e3; border-radius: 6px; padding: .6em; }
img { max-width: 100%; image-rendering: pixelated; }
table { border-collapse: collapse; font-size: .88em; margin: .5em 0; }
td, th { border-bottom: 1px solid #eee; padding: .15em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.reading { font-weight: 500; } .skipped { color: #a33; } .meta { font-size: .85em; color: #444; }
code { background: #f4f4f4; padding: .1em .3em; word-break: break-all; }
.kept { color: #1a7f37; } .discarded { color: #888; } .partly { color: #9a6700; } .uncertain { color: #6639ba; }
"""


def _e(s) -> str:
    return html.escape(str(s))


def _rows_table(rows: list[dict]) -> str:
    out = ["<table><tr><th>measure</th><th>value</th><th>95% interval</th><th>n</th><th></th></tr>"]
    for r in rows:
        if "skipped" in r:
            out.append(f"<tr><td>{_e(r['what'])}</td><td colspan=4 class=skipped>not measured: "
                       f"{_e(r['skipped'])}</td></tr>")
            continue
        value = "n/a" if r["value"] is None else _s(r["value"])
        if "interval" in r:
            interval = f"[{_s(r['interval'][0])}, {_s(r['interval'][1])}]"
        else:
            interval = f"<span title='{_e(r['no_interval'])}'>none: {_e(r['no_interval'])}</span>"
        n = "" if r["n"] is None else f"{_s(r['n'])} {_e(r['unit'])}"
        extra = r.get("beside", "")
        if "reading" in r:
            cls = {"kept": "kept", "discarded": "discarded", "partly kept": "partly",
                   "uncertain": "uncertain"}.get(r["reading"], "")
            extra = f"<span class='reading {cls}'>{_e(r['reading'])}</span> {_e(extra)}"
        else:
            extra = _e(extra)
        out.append(f"<tr><td>{_e(r['what'])}</td><td class=num>{value}</td><td class=num>{interval}</td>"
                   f"<td class=num>{n}</td><td>{extra}</td></tr>")
    return "\n".join(out + ["</table>"])


def _model_block(name: str, v: dict) -> str:
    parts = [f"<div class=model><h3>{_e(name)}</h3>"]
    if "skipped" in v:
        parts.append(f"<p class=skipped>Not run: {_e(v['skipped'])}.</p></div>")
        return "\n".join(parts)
    parts += [f"<img src='{_e(p)}' alt='{_e(name)}'>" for p in v.get("figures", [])]
    parts.append(_rows_table(v["rows"]))
    parts += [f"<p>{_e(s)}</p>" for s in v["sentences"]]
    parts.append("</div>")
    return "\n".join(parts)


def _differences_table(diffs: list[dict], models: list[str]) -> str:
    head = "".join(f"<th>{_e(m)}</th>" for m in models)
    out = [(f"<table><tr><th>section</th><th>measure</th>{head}<th>{_e(models[1])} − {_e(models[0])}</th>"
            "<th>95% intervals overlap</th></tr>")]
    for d in diffs:
        vals = "".join(f"<td class=num>{_s(d['values'][m])}</td>" for m in models)
        out.append(f"<tr><td>{_e(d['section'])}</td><td>{_e(d['what'])}</td>{vals}"
                   f"<td class=num>{_s(d['difference'])}</td><td>{'yes' if d['intervals_overlap'] else 'no'}</td></tr>")
    return "\n".join(out + ["</table>"])


def render_html(report: dict) -> str:
    models = list(report["models"])
    body = [f"<h1>What does the representation keep? {_e(', '.join(models))}</h1>",
            "<p class=meta>Command: <code>" + _e(report["command"]) + "</code><br>Versions: "
            + _e(", ".join(f"{k} {v}" for k, v in report["versions"].items())) + f"<br>Data: <code>{_e(report['data'])}"
            "</code>; every interval is a 95% interval; n says how many images (or samples) a number rests on.</p>",
            _models_table(report["models"]), _settings_table(report["settings"])]
    body.append("<p>Sections: " + " · ".join(f"<a href='#{s}'>{_e(TITLES[s])}</a>" for s in TITLES) + "</p>")
    for section, title in TITLES.items():
        body.append(f"<section id={section}><h2>{_e(title)}</h2><p class=what>{_e(WHAT[section])}</p>")
        views = report["sections"].get(section)
        if views is None:
            body.append("<p class=skipped>Not computed yet (the report was interrupted or is still running).</p>")
        elif section == "comparison":
            body.append(_comparison_block(views, models))
        else:
            if section == "invariance" and report.get("figures", {}).get("invariance"):
                body.append(f"<img src='{_e(report['figures']['invariance'])}' alt='invariance profile'>")
            blocks = [_model_block(m, views[m]) for m in models if m in views]
            body.append(f"<div class=models style='--cols: {len(blocks)}'>" + "\n".join(blocks) + "</div>")
        body.append("</section>")
    body.append(_timing_table(report["timing"]))
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>rcdm report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _comparison_block(v: dict, models: list[str]) -> str:
    if "skipped" in v:
        return f"<p class=skipped>Not run: {_e(v['skipped'])}.</p>"
    parts = [f"<img src='{_e(p)}' alt='comparison'>" for p in v["figures"]]
    parts += [f"<p>{_e(s)}</p>" for s in v["sentences"]]
    parts.append(_rows_table(v["rows"]))
    if v["differences"]:
        parts.append("<h3>Largest differences</h3>" + _differences_table(v["differences"], models))
    return "\n".join(parts)


def _models_table(models: dict) -> str:
    out = ["<table><tr><th>model</th><th>path</th><th>encoder</th><th>layer</th><th>dim</th><th>sampler</th></tr>"]
    for name, m in models.items():
        out.append(f"<tr><td>{_e(name)}</td><td><code>{_e(m['path'])}</code></td><td><code>{_e(m['encoder'])}</code>"
                   f"</td><td>{_e(m['layer'])}</td><td class=num>{_s(m['dim'])}</td><td>{_e(m['sampling'])}</td></tr>")
    return "\n".join(out + ["</table>"])


def _settings_table(settings: dict) -> str:
    def cell(v):
        return "recorded" if v is None else _e(v) if isinstance(v, str) else _s(v)

    cells = "".join(f"<tr><td>{_e(k)}</td><td class=num>{cell(v)}</td></tr>" for k, v in settings.items())
    return f"<details><summary>Settings</summary><table>{cells}</table></details>"


def _timing_table(timing: dict) -> str:
    cells = "".join(f"<tr><td>{_e(k)}</td><td class=num>{_s(v)}</td></tr>" for k, v in timing["sections"].items())
    return (f"<h2>Timing</h2><p class=meta>Seconds per section when it was computed (a rerun reuses finished "
            f"sections); total {_s(timing['total_seconds'])} s.</p><table>{cells}</table>")


def write_report(out, docs: dict, models: dict, header: dict) -> dict:
    """Write `report.json` and `index.html` (both atomically) from the stored sections; returns the report."""
    from pathlib import Path

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
    import base64
    import re
    from pathlib import Path

    out = Path(out)

    def inline(m):
        data = base64.b64encode((out / html.unescape(m.group(1))).read_bytes()).decode()
        return f"src='data:image/png;base64,{data}'"

    return re.sub(r"src='([^']+\.png)'", inline, (out / "index.html").read_text())
