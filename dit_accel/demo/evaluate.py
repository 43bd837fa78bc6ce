"""Does a demo video show what its prompt says? Colour and motion direction, read off the pixels.

Used by the tests (a trained model must beat an untrained one) and by the demo benchmark.
"""

from __future__ import annotations

import torch

from .data import BACKGROUND, COLOURS, DIRECTIONS


def read_video(frames: torch.Tensor) -> tuple[str | None, str | None]:
    """(colour, direction) seen in one video (F, H, W, 3) in [0, 1]; None where nothing is seen.

    Shape pixels are those far from the background; their mean colour picks the nearest named
    colour, and the centroid's displacement from the first to the last frame the direction.
    """
    distance = (frames - BACKGROUND).abs().sum(-1)  # (F, H, W)
    mask = distance > 0.6
    if mask.sum() < 4:
        return None, None
    mean = frames[mask].mean(0)
    colour = min(COLOURS, key=lambda name: float((mean - torch.tensor(COLOURS[name])).norm()))
    ys = torch.arange(frames.shape[1], dtype=torch.float32).view(-1, 1)
    xs = torch.arange(frames.shape[2], dtype=torch.float32).view(1, -1)
    centroids = []
    for f in (0, frames.shape[0] - 1):
        m = mask[f].float()
        if m.sum() < 2:
            return colour, None
        centroids.append(torch.stack([(m * ys).sum() / m.sum(), (m * xs).sum() / m.sum()]))
    dy, dx = (centroids[1] - centroids[0]).tolist()
    if max(abs(dy), abs(dx)) < 1.0:
        return colour, None
    direction = next(name for name, (ey, ex) in DIRECTIONS.items() if (ey, ex) == _sign_of_larger(dy, dx))
    return colour, direction


def _sign_of_larger(dy: float, dx: float) -> tuple[int, int]:
    if abs(dx) >= abs(dy):
        return 0, 1 if dx > 0 else -1
    return (1 if dy > 0 else -1), 0


def prompt_accuracy(videos: torch.Tensor, prompts: list[str]) -> tuple[float, float]:
    """Fractions of videos (B, F, H, W, 3) whose colour, and whose direction, match their prompts."""
    from .data import parse_prompt

    colour_hits = direction_hits = 0
    for video, prompt in zip(videos, prompts, strict=True):
        colour, _, direction = parse_prompt(prompt)
        seen_colour, seen_direction = read_video(video)
        colour_hits += seen_colour == colour
        direction_hits += seen_direction == direction
    return colour_hits / len(prompts), direction_hits / len(prompts)
