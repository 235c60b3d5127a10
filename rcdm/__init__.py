"""rcdm: representation-conditional diffusion models (Bordes et al., arXiv:2112.09164)."""
__version__ = "0.1.0"

from .model import RCDMUNet  # noqa: E402
from .pipeline import RCDMPipeline, RCDMPipelineOutput  # noqa: E402
from .sampling import Sampling, sample  # noqa: E402


def load_encoder(*args, **kwargs):
    """See `rcdm.encoders.load_encoder`."""
    from .encoders import load_encoder as _load

    return _load(*args, **kwargs)


__all__ = ["RCDMPipeline", "RCDMPipelineOutput", "RCDMUNet", "Sampling", "load_encoder", "sample", "__version__"]
