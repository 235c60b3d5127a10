"""rcdm: representation-conditional diffusion models (Bordes et al., arXiv:2112.09164)."""
from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public names load on first use (PEP 562), so `import rcdm` (and `rcdm --help`) imports no torch.
_LAZY = {"RCDMUNet": "model", "RCDMPipeline": "pipeline", "RCDMPipelineOutput": "pipeline", "Sampling": "sampling",
         "sample": "sampling"}

if TYPE_CHECKING:
    from .model import RCDMUNet
    from .pipeline import RCDMPipeline, RCDMPipelineOutput
    from .sampling import Sampling, sample


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'rcdm' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_LAZY[name]}", __name__), name)


def load_encoder(*args, **kwargs):
    """See `rcdm.encoders.load_encoder`."""
    from .encoders import load_encoder as _load  # `import rcdm` loads no torch (PEP 562 above)

    return _load(*args, **kwargs)


__all__ = ["RCDMPipeline", "RCDMPipelineOutput", "RCDMUNet", "Sampling", "load_encoder", "sample", "__version__"]
