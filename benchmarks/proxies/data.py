"""Training and evaluation data for the proxy models: clips and crops of scikit-image's photographs.

Every photograph ships inside scikit-image (no download). A **clip** is a crop window that pans and
zooms over one photograph for a number of frames, optionally with a coloured disc moving across it;
an **image** is one crop. Both are rendered with bilinear sampling from the photograph resized so
that its short side is ``PHOTO_SHORT_SIDE`` pixels, so content has the same scale at every grid
size: a smaller clip is a piece of a larger one, which is what lets the video proxy train mostly on
small grids and still see the statistics of the full one.

Conditioning is the photograph's index in ``PHOTOS``; ``NULL_CLASS`` (= ``len(PHOTOS)``) is the
unconditional class used for classifier-free guidance.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

#: scikit-image loaders (all offline), one class each.
PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "rocket",
    "stereo_motorcycle",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "coins",
    "moon",
    "grass",
)
NULL_CLASS = len(PHOTOS)
PHOTO_SHORT_SIDE = 384


@cache
def photo(index: int) -> torch.Tensor:
    """Photograph ``index`` as (3, H, W) float32 in [0, 1], short side ``PHOTO_SHORT_SIDE``."""
    from skimage import data as skdata

    array = getattr(skdata, PHOTOS[index])()
    if isinstance(array, tuple):  # stereo pairs: the left view
        array = array[0]
    image = torch.as_tensor(array).float()
    if image.max() > 1.5:
        image = image / 255.0
    if image.ndim == 2:
        image = image.unsqueeze(-1).expand(*image.shape, 3)
    image = image[..., :3].permute(2, 0, 1).contiguous()
    scale = PHOTO_SHORT_SIDE / min(image.shape[1:])
    size = (round(image.shape[1] * scale), round(image.shape[2] * scale))
    resized = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return resized.clamp(0, 1)  # the antialiasing filter overshoots by a few ulps


def _sample_windows(
    image: torch.Tensor, centres: torch.Tensor, sizes: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Bilinear crops of ``image`` (3, H, W): one (3, height, width) frame per row of ``centres``
    (N, 2: y, x in pixels) and ``sizes`` (N, 2: window height, width in pixels)."""
    _, ih, iw = image.shape
    n = centres.shape[0]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sizes[:, 1] / iw
    theta[:, 1, 1] = sizes[:, 0] / ih
    theta[:, 0, 2] = centres[:, 1] / iw * 2 - 1
    theta[:, 1, 2] = centres[:, 0] / ih * 2 - 1
    grid = F.affine_grid(theta, (n, 3, height, width), align_corners=False)
    return F.grid_sample(image.expand(n, -1, -1, -1), grid, mode="bilinear", align_corners=False)


def _window_path(
    image: torch.Tensor, height: int, width: int, zoom: tuple[float, float], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A start and an end window (centre, size) inside ``image``, zoom drawn from ``zoom``."""
    _, ih, iw = image.shape
    z = zoom[0] + (zoom[1] - zoom[0]) * torch.rand(2, generator=generator)
    sizes = torch.stack([height * z, width * z], dim=1)
    fit = torch.minimum(
        torch.tensor([ih / sizes[:, 0].max(), iw / sizes[:, 1].max()]).min(), torch.tensor(1.0)
    )
    sizes = sizes * fit  # a window never leaves the photograph
    lo = sizes / 2
    hi = torch.tensor([ih, iw]) - sizes / 2
    centres = lo + (hi - lo) * torch.rand(2, 2, generator=generator)
    return centres, sizes


def make_clip(
    index: int,
    *,
    frames: int = 8,
    height: int = 128,
    width: int = 256,
    generator: torch.Generator,
    shape_probability: float = 0.5,
) -> torch.Tensor:
    """(frames, 3, height, width) in [0, 1]: a window panning and zooming over photograph ``index``
    (start and end windows drawn at random, linear in between), with a moving disc on top with
    probability ``shape_probability``."""
    image = photo(index)
    centres, sizes = _window_path(image, height, width, (0.8, 1.3), generator)
    s = torch.linspace(0, 1, frames).view(-1, 1)
    clip = _sample_windows(
        image, centres[0] + s * (centres[1] - centres[0]), sizes[0] + s * (sizes[1] - sizes[0]), height, width
    )
    if float(torch.rand(1, generator=generator)) < shape_probability:
        radius = float(8 + 10 * torch.rand(1, generator=generator))
        colour = torch.rand(3, generator=generator).view(3, 1, 1)
        start = torch.rand(2, generator=generator) * torch.tensor([height, width])
        speed = (torch.rand(2, generator=generator) * 2 - 1) * 6  # pixels per frame
        ys = torch.arange(height).view(-1, 1) + 0.5
        xs = torch.arange(width).view(1, -1) + 0.5
        for f in range(frames):
            cy, cx = (start + speed * f).tolist()
            inside = ((ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2).float()
            clip[f] = clip[f] * (1 - inside) + colour * inside
    return clip.clamp(0, 1)


def make_image(
    index: int, *, height: int = 256, width: int = 256, generator: torch.Generator
) -> torch.Tensor:
    """(3, height, width) in [0, 1]: one crop of photograph ``index`` at a random place and zoom."""
    image = photo(index)
    centres, sizes = _window_path(image, height, width, (0.6, 1.4), generator)
    return _sample_windows(image, centres[:1], sizes[:1], height, width)[0].clamp(0, 1)


def random_classes(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(len(PHOTOS), (batch,), generator=generator)


def clip_batch(
    batch: int, generator: torch.Generator, frames: int = 8, height: int = 128, width: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips (B, F, 3, H, W) in [0, 1], classes (B,)), classes uniform over the photographs."""
    classes = random_classes(batch, generator)
    clips = [
        make_clip(int(c), frames=frames, height=height, width=width, generator=generator) for c in classes
    ]
    return torch.stack(clips), classes


def image_batch(
    batch: int, generator: torch.Generator, height: int = 256, width: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 3, H, W) in [0, 1], classes (B,))."""
    classes = random_classes(batch, generator)
    images = [make_image(int(c), height=height, width=width, generator=generator) for c in classes]
    return torch.stack(images), classes
