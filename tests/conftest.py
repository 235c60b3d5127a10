"""Test setup: fully offline, deterministic, small thread count."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CIFAR_NPZ = REPO.parent / "shared" / "data" / "cifar10_jpeg.npz"


@pytest.fixture(scope="session")
def cifar_npz():
    if not CIFAR_NPZ.exists():
        pytest.fail(f"{CIFAR_NPZ} is missing: the tests need ../shared/data beside the repository")
    return CIFAR_NPZ
