"""The import contract: imports flow one way, from utilities up to the pipeline and the CLI.

Every module of step_ray belongs to a layer; a module may import its own layer and the layers below it,
never one above (lazy imports inside functions count: they are dependencies all the same). A violation that
only pending work removes is listed in ``EXCEPTIONS`` with the work that removes it; the test also fails
when a listed exception is no longer needed, so the list cannot go stale.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "step_ray"

#: Lowest first. Modules in one layer may import each other.
LAYERS: list[tuple[str, ...]] = [
    ("step_ray", "step_ray.config", "step_ray.stage", "step_ray.utils"),  # utilities, the config tree, the stage contract
    ("step_ray.video",),                                                    # media: decoding, shots
    ("step_ray.perception",),                                               # detectors, tracking, parsing
    ("step_ray.stsg",),                                                     # scene graphs
    ("step_ray.synth",),                                                    # the synthetic world (builds graphs)
    ("step_ray.qra",),                                                      # reasoning paths, QRA samples
    ("step_ray.models",),                                                   # the model layer
    ("step_ray.train", "step_ray.eval"),                                    # fine-tuning and evaluation
    ("step_ray.pipeline",),                                                 # steps, executors, flows
    ("step_ray.cli",),                                                      # the command line
]

#: (importer module, imported module) -> why it is allowed for now and what removes it.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), i
    assert found is not None, f"{module} is in no layer of the import contract: add it to LAYERS"
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, source: str | None = None) -> set[str]:
    """The step_ray modules the file at ``path`` (or ``source`` given as that file) imports."""
    tree = ast.parse(source if source is not None else path.read_text(), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            # `from step_ray.x import y` may import the submodule step_ray.x.y
            for a in node.names:
                out.add(f"{mod}.{a.name}")
    return {m for m in out if m == "step_ray" or m.startswith("step_ray.")}


def _existing(module: str) -> str:
    """The longest prefix of ``module`` that is a module of the package (``from x import name``)."""
    parts = module.split(".")
    while parts:
        candidate = PACKAGE.parent.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return module


def upward(importer: str, imported: set[str]) -> list[str]:
    """The modules of ``imported`` that stand above ``importer``."""
    mine = layer_of(importer)
    return sorted(m for m in {_existing(x) for x in imported} if layer_of(m) > mine)


def test_imports_flow_one_way():
    violations, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for imported in upward(importer, imports_of(path)):
            if (importer, imported) in EXCEPTIONS:
                used.add((importer, imported))
            else:
                violations.append(f"{importer} (layer {layer_of(importer)}) imports {imported} "
                                  f"(layer {layer_of(imported)})")
    assert not violations, "imports must flow from utilities up to the pipeline and the CLI:\n" + "\n".join(violations)
    stale = sorted(set(EXCEPTIONS) - used)
    assert not stale, f"these listed exceptions are no longer needed; remove them from EXCEPTIONS: {stale}"


def test_the_checker_finds_upward_imports_lazy_ones_included():
    """A module of the scene-graph layer that imports the pipeline inside a function is caught (relative
    imports resolved); its downward imports are not."""
    source = ("import step_ray.utils.storage\n\ndef f():\n    from step_ray.pipeline import steps\n"
              "    from ..perception.tracks import Track\n    from . import build\n")
    found = imports_of(PACKAGE / "stsg" / "schema.py", source)
    assert "step_ray.perception.tracks" in found and "step_ray.stsg.build" in found
    assert upward("step_ray.stsg.schema", found) == ["step_ray.pipeline", "step_ray.pipeline.steps"]
