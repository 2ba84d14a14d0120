"""step-ray: STEP self-training for Video-LLMs on Ray."""

from __future__ import annotations


def _version() -> str:
    """The version in the source tree's pyproject.toml (a `ray job` working dir holds one), else the
    installed distribution's."""
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        try:
            project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
            if project.get("name") == "step-ray" and project.get("version"):
                return str(project["version"])
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("step-ray")
    except PackageNotFoundError:
        return "unknown"


__version__ = _version()
