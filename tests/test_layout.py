"""The package layout: data -> teachers -> models -> md -> training -> kstep -> evaluation ->
distill, with cli on top (md left of training: the k-step rollout loss unrolls the engine's own
velocity-Verlet step); a module imports only from its own package or packages to its left
(lazy imports inside functions included). keys, units, thermo and the package root are below
everything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "mlff_distiller"
ORDER = ["data", "teachers", "models", "md", "training", "kstep", "evaluation", "distill", "cli"]
BASE = {"keys", "units", "thermo", "__init__", "py"}


def _package(module: str) -> str | None:
    """'mlff_distiller.md.runner' -> 'md'; None for a module outside the layout."""
    parts = module.split(".")
    if parts[0] != "mlff_distiller":
        return None
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "mlff_distiller":  # from mlff_distiller import md
                found += [
                    (node.lineno, f"mlff_distiller.{a.name}") for a in node.names if a.name in ORDER
                ]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_left_to_right(path):
    own = path.relative_to(ROOT).parts[0]
    assert own in ORDER, f"package {own!r} is not in the layout {ORDER}: add it there"
    wrong = []
    for line, module in _imports(path):
        target = _package(module)
        if target in (None, "base", own):
            continue
        if target not in ORDER or ORDER.index(target) > ORDER.index(own):
            wrong.append(f"line {line}: {module}")
    assert not wrong, f"{path.relative_to(ROOT)} imports from its right: {wrong}"


def test_the_checker_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from mlff_distiller.evaluation.metrics import x\n")
    assert _package(_imports(bad)[0][1]) == "evaluation"
