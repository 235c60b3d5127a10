"""What a report measures and on what: its settings, the models it names and the splits of its data."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReportSettings:
    """Sizes of every section. The defaults fit the shipped pair on 2 CPU cores in under 10 minutes (README);
    `small()` is what the app builds. Sampler, steps and guidance left None take each model's recorded choice."""

    num_images: int = 100              # fidelity: references, the first N readable test items
    samples_per_image: int = 2         # fidelity: K samples per reference (diversity needs 2)
    sample_images: int = 10            # samples: class-balanced inputs, one per class in turn
    sample_k: int = 4                  # samples: K per input
    invariance_images: int = 12        # invariance: images the bootstrap resamples
    invariance_k: int = 2              # invariance: samples per image and augmentation
    interpolation_points: int = 8      # interpolation: points from A to B, ends included
    manipulation_k: int = 4            # manipulation: samples per condition
    memorization_images: int = 16      # memorization: images per split (train, held-out)
    memorization_k: int = 2            # memorization: samples per image and mode
    compare_images: int = 5            # comparison: inputs of the side-by-side grid
    compare_k: int = 4                 # comparison: samples per input
    bank_size: int = 2000              # labelled train embeddings for kNN labels and neighbours
    bootstrap: int = 1000              # bootstrap resamples behind every interval over images
    seed: int = 0                      # base seed of all sampling noise and of the bootstrap
    steps: int | None = None           # sampler steps (None: the model's recorded choice)
    scheduler: str | None = None       # sampler (None: the model's recorded choice)
    guidance: float | None = None      # guidance scale (None: the model's recorded choice)
    batch_size: int = 64               # samples per sampler call: memory only, not results
    classifier: str | None = None      # fidelity: an independent judge (rcdm.judge), e.g. pretrained/cifar10-judge

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (not isinstance(v, int) or v < (0 if f.name in ("seed", "bootstrap") else 1)):
                raise ValueError(f"{f.name} must be a positive integer, got {v!r}")
        if self.num_images < 2:
            raise ValueError("num_images must be at least 2 (the rank needs two references)")
        if self.interpolation_points < 2:
            raise ValueError("interpolation_points must be at least 2 (the two ends)")

    @classmethod
    def small(cls, **overrides) -> ReportSettings:
        """A quick report (the app's): about a tenth of the default sampling."""
        base = {"num_images": 16, "sample_images": 5, "sample_k": 2, "invariance_images": 4,
                "memorization_images": 4, "memorization_k": 1, "compare_images": 3, "compare_k": 2, "bank_size": 500,
                "bootstrap": 200, "interpolation_points": 6, "manipulation_k": 2}
        return cls(**{**base, **overrides})

    def sampling(self, k: int, seed: int | None = None):
        """The sampling spec of a section with K = k samples per input."""
        from ..sampling import Sampling  # torch-free at import: `rcdm report --help` reads these settings

        return Sampling(num_samples=k, num_inference_steps=self.steps, scheduler=self.scheduler,
                        guidance_scale=self.guidance, seed=self.seed if seed is None else seed,
                        batch_size=self.batch_size)


def parse_models(specs) -> dict[str, str]:
    """NAME=PATH or PATH (named by its directory) -> {name: path}, in order; None = the shipped default."""
    from ..hub import DEFAULT_MODEL  # torch-free at import: `rcdm report --help` reads these settings

    out = {}
    for spec in specs or [DEFAULT_MODEL]:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec.rstrip("/")).name, "", spec)
        if not name or not path:
            raise ValueError(f"bad model {spec!r}: give PATH, a shipped name or NAME=PATH")
        if name in out:
            raise ValueError(f"two models are named {name!r}; name them with NAME=PATH")
        out[name] = path
    return out


def train_split(data: str) -> tuple[str | None, str]:
    """(data spec of the train split, "") or (None, why there is none). The test split is what `data` names
    (a bare .npz: its test split); the train split is the same source's `train`."""
    from ..data import open_dataset  # torch-free at import: `rcdm report --help` reads these settings

    if data.startswith("torchvision:"):
        spec = ":".join(data.split(":")[:3] + ["train"])
    elif ".npz" in data:
        spec = data.partition(".npz")[0] + ".npz:train"
    else:
        return None, f"{data} is an image folder, which has no train split"
    try:
        ds = open_dataset(spec, "train")
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        return None, f"the data has no readable train split ({e})"
    if len(ds) == 0:
        return None, "the train split is empty"
    return spec, ""
