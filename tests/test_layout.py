"""The package's floor plan: folders by concern, each importing only from the folders below it."""

from __future__ import annotations

import ast
from pathlib import Path

import lmeval_ffnskip

PACKAGE = Path(lmeval_ffnskip.__file__).parent
# bottom to top: a folder may import from itself and the folders before it, never after
ORDER = ("skip", "taskdata", "inputs", "instruments", "harness", "sweep", "reporting")


def _imports(path: Path) -> set[str]:
    """Top-level package names a module imports: folders of ours ("skip", ...) and others."""
    found = set()
    here = path.relative_to(PACKAGE).parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's folder
                base = list(here[: len(here) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts[0]] if parts else [a.name for a in node.names]
                found.update(names)
            elif node.module:
                found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
    return found


def test_folders_import_only_downwards_and_the_mechanism_needs_no_lm_eval():
    problems = []
    for rank, folder in enumerate(ORDER):
        for path in (PACKAGE / folder).rglob("*.py"):
            used = _imports(path)
            above = sorted(used & set(ORDER[rank + 1 :]))
            if above:
                problems.append(f"{path.relative_to(PACKAGE)} imports {above}")
            if "cli" in used:
                problems.append(f"{path.relative_to(PACKAGE)} imports the CLI")
            if folder == "skip" and used & {"lm_eval", "taskdata", "harness"}:
                problems.append(f"{path.relative_to(PACKAGE)}: the skip mechanism imports {sorted(used)}")
    assert problems == []


def test_public_names_stay_importable():
    from lmeval_ffnskip import LAYER_METHODS, METHODS, FFNSkipLM, SkipPolicy, attach

    assert "spread" in METHODS and set(LAYER_METHODS) <= set(METHODS)
    assert SkipPolicy().method == "ffnskip" and callable(attach) and FFNSkipLM.__name__ == "FFNSkipLM"


def _module(path: Path) -> str:
    """``skip/rules/__init__.py`` -> ``skip.rules``; ``skip/rule.py`` -> ``skip.rule``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _our_imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every import of a module of ours in ``path`` (top-level, in functions and under
    TYPE_CHECKING alike): (the module, the names taken from it)."""
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    package = _module(path).split(".") if path.name == "__init__.py" else _module(path).split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1] if node.level > 1 else package
            target = ".".join(base + (node.module.split(".") if node.module else []))
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}".strip(".") for n in names if f"{target}.{n}".strip(".") in modules]
            found += [(m, []) for m in submodules]
            if len(submodules) < len(names):
                found.append((target, [n for n in names if f"{target}.{n}".strip(".") not in modules]))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmeval_ffnskip."):
            found.append((node.module.removeprefix("lmeval_ffnskip."), [a.name for a in node.names]))
    return found


def test_no_import_circle_and_no_private_name_taken_from_another_module():
    import graphlib

    graph, private = {}, []
    for path in PACKAGE.rglob("*.py"):
        imports = _our_imports(path)
        graph[_module(path)] = {m for m, _ in imports if m and m != _module(path)}
        private += [f"{_module(path)}: {n} of {m}" for m, names in imports for n in names if n[0] == "_"]
    tuple(graphlib.TopologicalSorter(graph).static_order())  # CycleError names a circle
    assert private == []
