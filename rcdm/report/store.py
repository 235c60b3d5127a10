"""Where a report keeps its finished sections, and its one progress bar.

Each finished section is `sections/<name>.json` (numbers, the settings it was computed with, its figures) plus its
PNGs. Every file is written to a temporary name and renamed, figures first and the JSON last, so the JSON is the
mark of a complete section: an interrupted run leaves whole sections or none, and a rerun with the same settings
skips them.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..fsutil import atomic_file, write_atomic

FORMAT = "rcdm-report-section/1"


def save_figure(fig, path: Path) -> None:
    """A matplotlib Figure or a PIL image -> PNG at `path`, atomically."""
    with atomic_file(path) as tmp:
        if hasattr(fig, "savefig"):
            fig.savefig(tmp, dpi=100)
        else:
            fig.save(tmp, format="PNG")


class Store:
    """Finished sections of the report in `out/sections/`."""

    def __init__(self, out):
        self.out = Path(out)
        self.dir = self.out / "sections"
        self.dir.mkdir(parents=True, exist_ok=True)

    def load(self, name: str, key: dict) -> dict | None:
        """The stored section `name` if it was computed with `key` (settings, model, data), else None."""
        path = self.dir / f"{name}.json"
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except ValueError:  # cannot happen with atomic writes, but a hand-edited file must not stop the report
            return None
        figures_ok = all((self.out / p).is_file() for p in doc.get("figures", {}).values())
        return doc if doc.get("key") == _normal(key) and figures_ok else None

    def save(self, name: str, key: dict, numbers: dict, figures: dict, seconds: float) -> dict:
        """Write the figures (name -> Figure or PIL image), then the JSON that marks the section done."""
        paths = {}
        for fig_name, fig in figures.items():
            path = self.dir / f"{name}-{fig_name}.png"
            save_figure(fig, path)
            paths[fig_name] = path.relative_to(self.out).as_posix()
        doc = {"format": FORMAT, "name": name, "key": _normal(key), "numbers": _normal(numbers), "figures": paths,
               "seconds": seconds}
        write_atomic(self.dir / f"{name}.json", json.dumps(doc, indent=1))
        return doc


def _normal(obj):
    """JSON round trip (tuples -> lists, tensors -> lists): what a stored key compares equal to."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


class Progress:
    """One bar over the whole report, counted in samples. Sampling advances it as the UNet runs (a forward hook
    counts rows), so it moves during a long section too; finishing or skipping a section settles it at the
    planned total. `callback(fraction, desc)` mirrors it (the app's progress bar)."""

    def __init__(self, total: float, enabled: bool = True, callback=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=round(total, 1), unit="sample", desc="report", disable=not enabled,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} samples [{elapsed}<{remaining}]")
        self.callback, self.done, self.total = callback, 0.0, max(total, 1e-9)

    def stage(self, desc: str) -> None:
        self.bar.set_description(desc)
        self._notify(desc)

    def advance(self, samples: float) -> None:
        self.bar.update(samples)
        self._notify(self.bar.desc)

    def settle(self, planned_end: float) -> None:
        """The stage ended: the bar stands at the cumulative plan, whatever the hooks counted."""
        self.bar.update(planned_end - self.bar.n)
        self._notify(self.bar.desc)

    def _notify(self, desc: str) -> None:
        if self.callback is not None:
            self.callback(min(1.0, self.bar.n / self.total), desc)

    def watch(self, pipe, rows_per_sample: float):
        """Advance by every UNet call of `pipe` (rows / rows per sample). Returns the hook handle, or None for
        pipe-like objects without a UNet (the tests' oracles)."""
        unet = getattr(pipe, "unet", None)
        if unet is None:
            return None

        def hook(module, args, kwargs):
            rows = (args[0] if args else kwargs["sample"]).shape[0]
            self.advance(rows / rows_per_sample)

        return unet.register_forward_pre_hook(hook, with_kwargs=True)

    def close(self) -> None:
        self.bar.close()
