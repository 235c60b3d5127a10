"""The report's views: the stored sections turned into rows of numbers and plain sentences, the content of
`report.json` and of its page (`page`). Every row says what it measures, on how many images, and its interval."""
from __future__ import annotations

import json

import numpy as np

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


def num(v) -> str:
    """A number as the page prints it: exactly as in report.json (rounded by `r4`, printed as JSON)."""
    return json.dumps(r4(v))


# ------------------------------------------------------------------------------------------------ sections
def fidelity_view(n: dict) -> dict:
    r, ci, fd, d, ca = n["rank"], n["rank_ci"], n["fd"], n["diversity"], n["class_agreement"]
    N = n["num_images"]
    rows = [row("mean rank", r["mean"], N, ci["mean"], beside=f"chance {num(r['chance_mean'])}"),
            row("top-1 %", r["top1_pct"], N, ci["top1_pct"], beside=f"chance {num(100 / N)}"),
            row("top-5 %", r["top5_pct"], N, ci["top5_pct"], beside=f"chance {num(min(100.0, 500 / N))}"),
            row("FD samples vs real", fd["samples_vs_real"], fd["num_samples"], unit="samples",
                no_interval="one statistic of the whole set; read it against the real-half calibration"),
            row("FD real half vs half (calibration)", fd["real_half_vs_half"], fd["num_real"], unit="real images",
                no_interval="the calibration itself")]
    div_why = "evaluate reports the mean over images only"
    if d["pixel_rms"] is not None:
        rows += [row("pixel diversity (RMS)", d["pixel_rms"], N, no_interval=div_why),
                 row("feature diversity (cosine)", d["feature_cosine"], N, no_interval=div_why)]
    text = [(f"A sample is closer to its own source than to any of the other {N - 1} references "
             f"{num(r['top1_pct'])}% of the time (mean rank {num(r['mean'])}, chance {num(r['chance_mean'])}).")]
    cal, f = fd["real_half_vs_half"], fd["samples_vs_real"]
    if cal is not None:
        verdict = ("no further from the real images than one half of them is from the other" if f <= cal else
                   "about as realistic as real images" if f <= 1.5 * cal else "less realistic than real images")
        text.append(f"FD {num(f)} ({fd['num_samples']} samples vs {fd['num_real']} real images) against {num(cal)} "
                    f"between two halves of the real images (FD grows as sets shrink): in this feature space the "
                    f"samples are {verdict}.")
    if "skipped" in ca:
        rows.append({"what": "class agreement", "skipped": ca["skipped"]})
    else:
        rows += [row("class agreement %", pct(ca["samples"]), N, _pct(ca["samples_ci"]), beside="Wilson, n = images"),
                 row("real-image ceiling %", pct(ca["real"]), N, _pct(ca["real_ci"]),
                     beside=f"kNN k={ca['k']} on {ca['num_train']} bank images")]
        text.append(f"The kNN class of a sample is its source's class {num(pct(ca['samples']))}% of the time, "
                    f"against {num(pct(ca['real']))}% for the real images themselves.")
    if "accuracy_samples" in n.get("classifier", {}):  # only when a classifier was given
        rows += classifier_rows(n["classifier"], N, text)
    return {"rows": rows, "sentences": text[:1] + [" ".join(text[1:])] if len(text) > 1 else text}


def classifier_rows(c: dict, n: int, text: list) -> list[dict]:
    """The independent classifier's rows (rcdm.metrics definition 5), and a sentence appended to `text`."""
    text.append(f"An independent classifier labels {num(pct(c['accuracy_samples']))}% of the samples with their "
                f"source's class, against {num(pct(c['accuracy_sources']))}% of the sources themselves.")
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
    text = [(f"The {k} samples of one input differ by {num(d['pixel_rms'])} RMS per pixel on average "
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
        groups.setdefault(reading(v, ci[a]), []).append(f"{a} ({num(v)})")
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
    text = [f"The samples' embeddings go from cos {num(to_a[0])} to f(A) at t = 0 to cos {num(to_b[-1])} to f(B) at "
            "t = 1" + (f", and are closer to B than to A from t = {num(cross)} on." if cross is not None
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
             f"neighbours moves the samples' cosine to the source from {num(c['original']['cos_samples_to_source'])} "
             f"to {num(c['zeroed']['cos_samples_to_source'])}; transplanting them from the target moves the cosine to "
             f"the target from {num(c['original']['cos_samples_to_target'])} to "
             f"{num(c['transplanted']['cos_samples_to_target'])}.")]
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
    text = [f"From the background alone, samples show the hidden class for {num(pct(tr[key]))}% of training images "
            f"and {num(pct(te[key]))}% of held-out ones (chance {num(pct(n['chance']))}%). "
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
                                 "sentence": f"{a} {verb} {what} {num(values[0])} while {b} {verb} {num(values[1])}"
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
