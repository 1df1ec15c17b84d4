"""gcnet_d2: GCNet (global context blocks) for Detectron2.

``import gcnet_d2`` registers the backbones, RPN and RoI heads in detectron2's registries;
``add_gcnet_config(cfg)`` adds the ``MODEL.GCNET`` keys and the speed-up switches
(``FAST``); ``gcnet_d2.fast.apply(model, cfg)`` applies the exact speed-ups to a built model;
``GCNetPredictor`` is detectron2's ``DefaultPredictor`` resizing images as gcnet_d2's
evaluation does (speed-ups applied).
"""

__version__ = "0.1.0"

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without detectron2
    raise ImportError(
        "gcnet_d2 needs detectron2, which is not importable here. It is not on PyPI under its "
        "own name: build it from source (https://detectron2.readthedocs.io) or run "
        "`bash scripts/setup_env.sh` in a gcnet_d2 checkout (see README, Install)."
    ) from e

from . import data, fast, layers, modeling  # noqa: E402  (modeling registers the builders)
from .config import add_gcnet_config  # noqa: E402
from .model_zoo import get_config, get_config_file, list_configs  # noqa: E402
from .predictor import GCNetPredictor  # noqa: E402

# The generated quick-start dataset, under default_synthetic_root(); generated on first use.
data.register_synthetic_datasets()

__all__ = [
    "GCNetPredictor",
    "__version__",
    "add_gcnet_config",
    "fast",
    "get_config",
    "get_config_file",
    "layers",
    "list_configs",
    "modeling",
]
