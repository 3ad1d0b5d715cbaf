"""NemotronH (Nemotron 3 Nano) in lean PyTorch, used from a checkout.

    from model import NemotronHConfig, build_model, load_model, save_checkpoint, HybridCache
    from model.generate import generate, sample
"""
from .cache import HybridCache
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .config import PRESETS, NemotronHConfig
from .nemotron_h import ForwardMeta, MoEAux, NemotronH, build_model

__all__ = ["CheckpointError", "ForwardMeta", "HybridCache", "MoEAux", "NemotronH", "NemotronHConfig", "PRESETS",
           "build_model", "load_checkpoint", "load_model", "save_checkpoint"]
