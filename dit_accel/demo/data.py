"""Procedural training videos for the demo model, and the prompt grammar they are described in.

A video is one shape (square or circle) of one colour on a dark background, moving by a fixed step
per frame in one direction. The prompt names the three: "red square moving right".
"""

from __future__ import annotations

import torch

COLOURS = {
    "red": (0.9, 0.15, 0.1),
    "green": (0.15, 0.85, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}
SHAPES = ("square", "circle")
DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
BACKGROUND = 0.08
SIZE = 10  # shape side / diameter in pixels at 32x32
STEP = 2  # pixels per frame at 32x32


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """(colour, shape, direction) named by a prompt; a ValueError lists the vocabulary otherwise."""
    words = prompt.lower().replace(",", " ").split()
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    direction = next((w for w in words if w in DIRECTIONS), None)
    if colour is None or shape is None or direction is None:
        raise ValueError(
            f"the demo model understands prompts like 'red square moving right': one colour of "
            f"{sorted(COLOURS)}, one shape of {list(SHAPES)}, one direction of {sorted(DIRECTIONS)}; "
            f"got {prompt!r}"
        )
    return colour, shape, direction


def make_video(
    colour: str,
    shape: str,
    direction: str,
    *,
    frames: int = 9,
    height: int = 32,
    width: int = 32,
    start: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(frames, 3, height, width) in [0, 1]. Sizes and speeds scale with the frame size; the start
    is drawn so that the shape stays inside the frame for the whole clip."""
    scale = height / 32
    size, step = SIZE * scale, STEP * scale
    dy, dx = DIRECTIONS[direction]
    travel = step * (frames - 1)
    if start is None:
        u = torch.rand(2, generator=generator)

        def axis(extent: int, d: int, r: float) -> float:
            lo = size / 2 + (travel if d < 0 else 0)
            hi = extent - size / 2 - (travel if d > 0 else 0)
            return lo + r * max(hi - lo, 0.0)

        start = (axis(height, dy, float(u[0])), axis(width, dx, float(u[1])))
    ys = torch.arange(height).view(height, 1) + 0.5
    xs = torch.arange(width).view(1, width) + 0.5
    rgb = torch.tensor(COLOURS[colour]).view(3, 1, 1)
    video = torch.full((frames, 3, height, width), BACKGROUND)
    for f in range(frames):
        cy, cx = start[0] + dy * step * f, start[1] + dx * step * f
        if shape == "square":
            inside = ((ys - cy).abs() <= size / 2) & ((xs - cx).abs() <= size / 2)
        else:
            inside = (ys - cy) ** 2 + (xs - cx) ** 2 <= (size / 2) ** 2
        video[f] = torch.where(inside, rgb, video[f])
    return video


def random_batch(batch: int, generator: torch.Generator, frames: int = 9, size: int = 32):
    """(videos (B, F, 3, H, W) in [0, 1], prompts) drawn uniformly over the vocabulary."""
    colours, directions = list(COLOURS), list(DIRECTIONS)
    videos, prompts = [], []
    for _ in range(batch):
        c = colours[int(torch.randint(len(colours), (1,), generator=generator))]
        s = SHAPES[int(torch.randint(len(SHAPES), (1,), generator=generator))]
        d = directions[int(torch.randint(len(directions), (1,), generator=generator))]
        videos.append(make_video(c, s, d, frames=frames, height=size, width=size, generator=generator))
        prompts.append(f"{c} {s} moving {d}")
    return torch.stack(videos), prompts
