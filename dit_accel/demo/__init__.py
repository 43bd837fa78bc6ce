"""The built-in ``demo`` model: a tiny Wan-architecture video transformer trained by this project.

It was trained on 32x32 pixel videos of one coloured shape moving in a direction ("red square
moving right") and renders such videos on a CPU in seconds, with no download: the weights
(``weights/demo.safetensors``, trained by ``scripts/train_demo_model.py``) and the word-level
prompt encoder ship in the package. It follows the colour and shape of a prompt, not the direction
(chance level; see the README).
"""

from __future__ import annotations

from .data import COLOURS, DIRECTIONS, SHAPES, make_video, parse_prompt
from .model import check_vocabulary
from .pipeline import DemoVideoPipeline, load_demo_pipeline

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "SHAPES",
    "DemoVideoPipeline",
    "check_vocabulary",
    "load_demo_pipeline",
    "make_video",
    "parse_prompt",
]
