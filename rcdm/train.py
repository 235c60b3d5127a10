"""`python -m rcdm.train ...` and `accelerate launch -m rcdm.train ...`: the command line is `rcdm.cli.train`, the
loop `rcdm.training.loop`. `train`, `TrainConfig` and `PRESETS` stay importable from here."""
from __future__ import annotations

from .train_config import PRESETS, TrainConfig  # noqa: F401 (re-exported)
from .training.loop import train  # noqa: F401 (re-exported)

if __name__ == "__main__":  # the entry point of `-m rcdm.train` only: library code never imports the CLI
    import sys

    from rcdm.cli.train import main

    sys.exit(main())
