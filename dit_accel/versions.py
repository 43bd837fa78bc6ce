"""The diffusers releases dit-accel is tested against, and the import-time check."""

from __future__ import annotations

from importlib import metadata

DIFFUSERS_RANGE = ((0, 42, 0), (0, 43, 0))


def _parse(version: str) -> tuple[int, int, int]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple((parts + [0, 0, 0])[:3])


def check_diffusers() -> bool:
    """False when diffusers is absent (kernels still work); raises outside the tested range."""
    try:
        installed = metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        return False
    low, high = DIFFUSERS_RANGE
    if not low <= _parse(installed) < high:
        raise ImportError(
            f"dit-accel supports diffusers >={'.'.join(map(str, low))},<{'.'.join(map(str, high))}; "
            f"found {installed}. Install a tested release: pip install 'diffusers>=0.42,<0.43'"
        )
    return True
