"""The package's shape, checked: module and function sizes, stages that do not import each
other, no import cycle, and what importing one stage loads."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workflow"
STAGES = ("preprocess", "extract", "train", "add", "prefilter", "evaluate")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The workflow modules that module `name` imports, at the top or inside functions."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if full in MODULES else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in MODULES and m != name}


def test_the_map_of_modules_is_what_architecture_md_describes():
    # _imports must resolve relative imports, or every other test here proves nothing
    assert "workflow.storage.store" in _imports("workflow.stages.base")
    assert "workflow.formats.layout" in _imports("workflow.formats.features")
    assert {f"workflow.stages.{s}" for s in STAGES} <= set(MODULES)
    doc = (ROOT / "ARCHITECTURE.md").read_text()
    for name in MODULES:
        leaf = name.rsplit(".", 1)[-1]
        if name.count(".") >= 2 and leaf != "__init__":
            assert f"`{leaf}`" in doc, f"{name} is missing from ARCHITECTURE.md's module map"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_are_short(name):
    text = MODULES[name].read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{name} is over {MAX_MODULE_LINES} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{name}: {', '.join(long)}"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage(stage):
    others = {f"workflow.stages.{s}" for s in STAGES if s != stage}
    assert not _imports(f"workflow.stages.{stage}") & others


def test_there_is_no_import_cycle():
    graph = {name: _imports(name) for name in MODULES}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        done.add(name)
    for name in sorted(graph):
        visit(name, [])


HEAVY = ("cv2", "faiss", "tensorflow", "keras", "annoy", "pyspark", "jax", "torch")


@pytest.mark.parametrize("module,allowed", [
    ("workflow.stages.preprocess", {"cv2"}),
    ("workflow.stages.extract", {"cv2"}),          # the model is loaded when the stage runs
    ("workflow.stages.train", {"faiss"}),
    ("workflow.stages.add", {"faiss"}),
    ("workflow.stages.prefilter", {"faiss", "annoy"}),
    ("workflow.stages.status", set()),
    ("workflow.search.modes", set()),
    ("workflow.cli", set()),
])
def test_importing_a_module_loads_only_what_it_needs(module, allowed):
    code = (f"import sys, {module}; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert set(out) <= allowed, f"importing {module} loads {sorted(set(out) - allowed)}"
