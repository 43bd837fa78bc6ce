"""dit-accel: training-free sparse attention for diffusers video and image transformers.

``import dit_accel`` adds ``enable_sparse_attention``, ``disable_sparse_attention`` and
``sparse_attention_report`` to ``diffusers.DiffusionPipeline``. The kernels
(``dit_accel.kernels``) work without diffusers; everything else needs a tested diffusers release.
"""

from __future__ import annotations

from .api import disable_sparse_attention, enable_sparse_attention, sparse_attention_report
from .config import SparseAttentionConfig, available_methods
from .methods.auto import AutoConfig
from .methods.corrections import RectifyCorrection, RettentionCorrection
from .methods.dense import DenseConfig
from .methods.freeswim import FreeSwimConfig
from .methods.rectified import RectifiedSpaAttnConfig
from .methods.rettention import RettentionConfig
from .methods.topk import TopKConfig
from .methods.vmoba import VMoBAConfig
from .methods.window3d import Window3DConfig
from .patches import UnsupportedModelError
from .patches.backend import IntegrationError
from .report import SparseAttentionReport
from .versions import check_diffusers

__version__ = "0.1.0"

if check_diffusers():
    from .api import install_pipeline_methods

    install_pipeline_methods()

__all__ = [
    "AutoConfig",
    "DenseConfig",
    "FreeSwimConfig",
    "IntegrationError",
    "RectifiedSpaAttnConfig",
    "RectifyCorrection",
    "RettentionConfig",
    "RettentionCorrection",
    "SparseAttentionConfig",
    "SparseAttentionReport",
    "TopKConfig",
    "UnsupportedModelError",
    "VMoBAConfig",
    "Window3DConfig",
    "available_methods",
    "disable_sparse_attention",
    "enable_sparse_attention",
    "sparse_attention_report",
]
