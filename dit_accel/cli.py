"""The ``dit-accel`` command. ``render`` and ``bench`` are planned (see the README's roadmap)."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import available_methods


def _info() -> int:
    import torch

    from .patches import supported_families

    print(f"dit-accel {__version__}")
    print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}")
    print(f"model families: {', '.join(supported_families())}")
    print(f"methods: {', '.join(available_methods())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dit-accel", description="Training-free sparse attention for diffusers."
    )
    parser.add_argument("--version", action="version", version=f"dit-accel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print versions, supported model families and methods")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    return 2


if __name__ == "__main__":
    sys.exit(main())
