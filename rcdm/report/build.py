"""`build_report`: run every section for every model (resuming finished ones), then write the page."""
from __future__ import annotations

import platform
import re
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from .. import __version__
from ..choices import AUGMENTATIONS
from . import sections as S
from .page import write_report
from .settings import ReportSettings
from .store import Progress, Store

# Settings each section depends on: a rerun recomputes a section only when one of these (or the model, the data,
# or the sampler) changed.
DEPENDS = {
    "bank": ("bank_size", "memorization_images"),
    "fidelity": ("num_images", "samples_per_image", "bootstrap", "bank_size", "memorization_images"),
    "samples": ("sample_images", "sample_k", "bootstrap"),
    "invariance": ("invariance_images", "invariance_k", "bootstrap"),
    "interpolation": ("interpolation_points",),
    "manipulation": ("manipulation_k", "bank_size", "memorization_images"),
    "memorization": ("memorization_images", "memorization_k", "bank_size"),
    "comparison": ("compare_images", "compare_k"),
}
COMMON = ("seed", "steps", "scheduler", "guidance")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"rcdm": __version__, "python": platform.python_version()}
    for pkg in ("torch", "diffusers", "numpy", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def planned_samples(s: ReportSettings, num_models: int, augmentations, has_train: bool) -> dict:
    """Samples each per-model section draws (the progress bar's plan), and the comparison's total."""
    return {"fidelity": s.num_images * s.samples_per_image, "samples": s.sample_images * s.sample_k,
            "invariance": s.invariance_images * (1 + len(augmentations)) * s.invariance_k,
            "interpolation": s.interpolation_points, "manipulation": 3 * s.manipulation_k,
            "memorization": 2 * 2 * s.memorization_images * s.memorization_k if has_train else 0,
            "comparison": num_models * s.compare_images * s.compare_k if num_models > 1 else 0}


class _Runner:
    """Runs sections in order, each skipped if stored with the same key, and rewrites the page after each."""

    def __init__(self, out, pipes, model_ids, data, settings, header, progress, rows_per_sample):
        self.store, self.pipes, self.ids, self.data, self.s = Store(out), pipes, model_ids, data, settings
        self.header, self.progress, self.rows_per_sample = header, progress, rows_per_sample
        self.docs, self.planned_end, self.out = {}, 0.0, Path(out)
        self.models = {name: _model_info(pipe, model_ids[name], settings) for name, pipe in pipes.items()}

    def key(self, kind: str, names) -> dict:
        s = self.s
        return {"section": kind, "data": self.data, "settings": {f: getattr(s, f) for f in DEPENDS[kind] + COMMON},
                "models": {n: {"id": self.ids[n], "encoder": self.pipes[n].encoder.config(),
                               "sampling": asdict(s.sampling(1).resolve(self.pipes[n]))} for n in names}}

    def run(self, kind: str, names, compute, planned: float, extra_key: dict | None = None) -> dict:
        doc_name = kind if kind == "comparison" else f"{kind}/{names[0]}"
        file_name = kind if kind == "comparison" else f"{kind}-{slug(names[0])}"
        key = {**self.key(kind, names), **(extra_key or {})}
        self.progress.stage(doc_name)
        doc = self.store.load(file_name, key)
        if doc is None:
            handles = [self.progress.watch(self.pipes[n], self.rows_per_sample[n]) for n in names]
            t0 = time.perf_counter()
            try:
                numbers, figures = compute()
            finally:
                for h in handles:
                    if h is not None:
                        h.remove()
            doc = self.store.save(file_name, key, numbers, figures, time.perf_counter() - t0)
        self.planned_end += planned
        self.progress.settle(self.planned_end)
        self.docs[doc_name] = doc
        self.write()
        return doc

    def write(self) -> dict:
        return write_report(self.out, self.docs, self.models, self.header)


def _model_info(pipe, model_id: str, s: ReportSettings) -> dict:
    enc = pipe.encoder.config()
    run = s.sampling(1).resolve(pipe)
    return {"path": model_id, "encoder": enc["spec"], "layer": enc["layer"], "dim": enc["dim"],
            "sampling": f"{run.describe()}, {run.dtype}"}


def build_report(pipes: Mapping, data: str, out, settings: ReportSettings | None = None,
                 model_ids: Mapping[str, str] | None = None, command: str | None = None,
                 augmentations=AUGMENTATIONS, progress: bool = True, callback=None) -> dict:
    """Write the report for `pipes` (name -> pipeline) on `data` (a data spec; its test split is the reference
    set) into directory `out`: `index.html`, `report.json`, `sections/` and `figures/`. Finished sections already
    in `out` with the same settings are reused. `model_ids` name each model in the resume keys and on the page
    (default: the names); `callback(fraction, desc)` follows the progress. Returns the report dict."""
    s, names = settings or ReportSettings(), list(pipes)
    if not names:
        raise ValueError("the report needs at least one model")
    ids = {n: str((model_ids or {}).get(n, n)) for n in names}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = S.read_inputs(data, s)
    header = {"command": command or "rcdm.report.build_report (Python API)", "versions": versions(), "data": data,
              "settings": asdict(s), "augmentations": list(augmentations)}
    plan = planned_samples(s, len(names), augmentations, inputs.train_spec is not None)
    rows = {n: _rows_per_sample(pipes[n], s) for n in names}
    total = sum(v for k, v in plan.items() if k != "comparison") * len(names) + plan["comparison"]
    bar = Progress(total, progress, callback)
    runner = _Runner(out, dict(pipes), ids, data, s, header, bar, rows)
    try:
        banks = {n: _bank(runner, pipes[n], n, inputs, s) for n in names}
        each = {"fidelity": lambda n: S.fidelity(pipes[n], inputs, banks[n], s),
                "samples": lambda n: S.samples(pipes[n], inputs, s),
                "invariance": lambda n: S.invariance(pipes[n], inputs, s, tuple(augmentations)),
                "interpolation": lambda n: S.interpolation(pipes[n], inputs, s),
                "manipulation": lambda n: S.manipulation(pipes[n], inputs, banks[n], s),
                "memorization": lambda n: S.memorization(pipes[n], inputs, banks[n], s)}
        for kind, compute in each.items():
            for n in names:
                extra = {"augmentations": list(augmentations)} if kind == "invariance" else None
                runner.run(kind, [n], lambda n=n, compute=compute: compute(n), plan[kind], extra)
        runner.run("comparison", names, lambda: S.comparison(dict(pipes), inputs, s), plan["comparison"])
    finally:
        bar.close()
    return runner.write()


def _rows_per_sample(pipe, s: ReportSettings) -> float:
    run = s.sampling(1).resolve(pipe)
    return run.num_inference_steps * (1 if run.guidance_scale == 1 else 2)


def _bank(runner: _Runner, pipe, name: str, inputs, s: ReportSettings):
    """The model's bank: embedded once and kept in `sections/bank-<name>.safetensors`."""
    path = runner.out / "sections" / f"bank-{slug(name)}.safetensors"
    key = runner.key("bank", [name])
    runner.progress.stage(f"bank/{name}")
    if runner.store.load(f"bank-{slug(name)}", key) is not None and path.is_file():
        return S.load_bank(path)
    t0 = time.perf_counter()
    bank = S.make_bank(pipe, inputs, s, path)
    runner.store.save(f"bank-{slug(name)}", key, {"source": bank.source, "why_not": bank.why_not}, {},
                      time.perf_counter() - t0)
    return bank
