"""Shared bootstrap of the ``jobs/*.py`` entrypoints: make the uploaded working dir importable, run the CLI."""

import sys
from pathlib import Path


def run(subcommand: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir holds step_ray/
    from step_ray.cli import main

    sys.exit(main([subcommand, *sys.argv[1:]]))
