"""sparsesweep: reproduce and extend 'On Implicit Filter Level Sparsity in CNNs' (Mehta et al., CVPR 2019).

For a training loop of your own: `from sparsesweep import measure_sparsity, find_features` (docs/models.md).
They are loaded on first use, so that `import sparsesweep` does not import torch."""
from pathlib import Path

__version__ = "0.1.0"  # the one place the version is kept: the package's metadata and --help read it
# The config tree ships inside the package (Hydra's layout for an installed application).
CONF_DIR = Path(__file__).resolve().parent / "conf"
_LAZY = {"measure_sparsity": "sparsesweep.measure", "find_features": "sparsesweep.models.discovery"}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparsesweep' has no attribute {name!r}")
