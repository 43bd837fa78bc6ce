"""The file a render is written to: the format follows the extension the user typed.

Videos go through imageio's ffmpeg plugin (the binary bundled with ``imageio-ffmpeg``), GIFs and
images through Pillow. An extension without a writer is refused before anything is loaded, with
the list below, rather than silently written under another name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: ffmpeg encoder per video container; every one is in imageio-ffmpeg's bundled binary.
VIDEO_CODECS = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".avi": "mpeg4",
    ".webm": "libvpx-vp9",
}
VIDEO_SUFFIXES = (*VIDEO_CODECS, ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def supported_suffixes() -> str:
    """The extensions a render can be written to, as one phrase for error messages."""
    return f"videos: {', '.join(VIDEO_SUFFIXES)}; images: {', '.join(IMAGE_SUFFIXES)}"


def format_problem(path: Path, video: bool | None) -> str | None:
    """Why ``path`` cannot hold the render (``video``: True for a video model, False for an image
    model, None while the model is not known yet), or None when it can."""
    suffix = path.suffix.lower()
    if not suffix:
        return f"no file extension; use one of {supported_suffixes()}"
    if suffix not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
        return f"dit-accel cannot write {suffix} files; use one of {supported_suffixes()}"
    if video is True and suffix not in VIDEO_SUFFIXES:
        return f"this model renders a video, not an image; use one of {', '.join(VIDEO_SUFFIXES)}"
    if video is False and suffix not in IMAGE_SUFFIXES:
        return f"this model renders an image, not a video; use one of {', '.join(IMAGE_SUFFIXES)}"
    return None


def write_frames(pixels: np.ndarray, path: Path, fps: int | None) -> None:
    """Write ``pixels`` (frames, height, width, 3) uint8 to ``path`` in the format of its extension.

    ``fps`` None: an image model's output, written as one image (the first frame).
    """
    from PIL import Image

    suffix = path.suffix.lower()
    if fps is None:
        Image.fromarray(pixels[0]).save(path)
        return
    if suffix == ".gif":
        first, *rest = (Image.fromarray(frame) for frame in pixels)
        first.save(path, save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
        return
    import imageio.v2 as imageio

    codec = VIDEO_CODECS[suffix]
    # VP9 has no quality scale of its own: constant quality (CRF) with no bitrate cap instead.
    quality = dict(quality=None, output_params=["-crf", "32", "-b:v", "0"]) if suffix == ".webm" else {}
    options = dict(fps=fps, codec=codec, macro_block_size=1, quality=8) | quality
    with imageio.get_writer(str(path), **options) as writer:
        for frame in pixels:
            writer.append_data(frame)
