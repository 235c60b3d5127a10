"""The models the app offers: loaded once on first use, each sampled under its own lock."""
from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
from PIL import Image

from rcdm import RCDMPipeline, Sampling, sample
from rcdm.choices import DEFAULT_SAMPLING
from rcdm.flags import auto_device
from rcdm.images import to_pil
from rcdm.pipeline import recorded_sampling


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
        """The first model's recorded sampler, steps and guidance (read from its directory, weights not loaded)."""
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
