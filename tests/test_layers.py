"""The layer order of docs/DESIGN.md, read from the source: who may import whom, and no import circles.

    runtime/        imports nothing of ours above it (and never torch)
    coordgan/       runtime
    export/         runtime, coordgan
    triton_models/  runtime, export
    coordgan/cli/   anything; nothing else imports it

Every import counts, the lazy ones inside functions too: a layer that imports upwards only at run
time still cannot be installed or reasoned about without the layer above.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "coordgan", "export", "triton_models")
ALLOWED = {
    "runtime": {"runtime"},
    "coordgan": {"runtime", "coordgan"},
    "export": {"runtime", "coordgan", "export"},
    "triton_models": {"runtime", "export", "triton_models"},
    "cli": {"runtime", "coordgan", "export", "triton_models", "cli"},
}


def layer(module: str) -> str:
    return "cli" if module == "coordgan.cli" or module.startswith("coordgan.cli.") else module.split(".")[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Our modules that the file imports (a `from pkg import x` counts as pkg.x when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up from the importing package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] in PACKAGES or t == "torch" or t.startswith("torch."))
    return found


def graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {name: imports(path, name, modules) for name, path in modules.items()}


def test_every_import_follows_the_layer_order():
    bad = []
    for source, targets in graph().items():
        for target in targets:
            if target == "torch" or target.startswith("torch."):
                if layer(source) == "runtime":
                    bad.append(f"{source} imports {target} (runtime/ never imports torch)")
                continue
            if layer(target) not in ALLOWED[layer(source)]:
                bad.append(f"{source} imports {target}")
    assert not bad, "layer order violated:\n" + "\n".join(sorted(bad))


def test_no_import_circles():
    edges = {m: {t for t in ts if not (t == "torch" or t.startswith("torch."))} for m, ts in graph().items()}
    index, low, on_stack, stack, circles = {}, {}, set(), [], []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The checks are not blind: an upward lazy import and a circle planted in a copy of the tree fail them."""
    import shutil
    import sys

    import pytest

    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "runtime" / "planted.py").write_text("def f():\n    from coordgan.cli import app\n")
    (tmp_path / "export" / "a_planted.py").write_text("import export.b_planted\n")
    (tmp_path / "export" / "b_planted.py").write_text("from export import a_planted\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="runtime.planted imports coordgan.cli"):
        test_every_import_follows_the_layer_order()
    with pytest.raises(AssertionError, match="export.a_planted <-> export.b_planted"):
        test_no_import_circles()


def test_the_docs_point_inside_the_repository():
    """README, docs/ and the other notes name files of this tree only: no ../ links, no stale paths."""
    import re

    docs = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md"), *ROOT.glob("*/README.md")]
    tops = ("runtime/", "coordgan/", "export/", "triton_models/", "tests/", "benchmarks/", "checkpoints/", "docs/")
    stale = []
    for doc in docs:
        text = doc.read_text()
        if "../" in text:
            stale.append(f"{doc.name}: a ../ path")
        for token in re.findall(r"`([^`\s]+)`", text):
            path = token.split(":")[0].rstrip(".,")
            code = path.endswith(("/", ".py", ".md", ".cu", ".sh"))  # not data that may not have shipped
            if code and path.startswith(tops) and not any(c in path for c in "<*{") and not (ROOT / path).exists():
                stale.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not stale, "docs name what is not in the tree:\n" + "\n".join(stale)


def _top_level_names(path: Path) -> set[str] | None:
    """Names a module defines at its top level (None: it has a module __getattr__, any name may exist)."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.For)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try)):
            names.update(n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef)))
    return names


def test_every_import_of_ours_resolves():
    """Scripts, tests and packages import only modules and names that exist (a moved module leaves no
    dangling import behind, lazy or in a script no test runs), and `-m` targets are runnable modules."""
    import re

    modules = our_modules()
    files = [p for d in (*PACKAGES, "benchmarks", "checkpoints", "tests") for p in (ROOT / d).rglob("*.py")]
    broken = []
    for path in files:
        text = path.read_text()
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Import):
                broken += [f"{path.relative_to(ROOT)}: import {a.name}" for a in node.names
                           if a.name.split(".")[0] in PACKAGES and a.name not in modules]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in PACKAGES:
                if node.module not in modules:
                    broken.append(f"{path.relative_to(ROOT)}: from {node.module}")
                    continue
                names = _top_level_names(modules[node.module])
                broken += [f"{path.relative_to(ROOT)}: from {node.module} import {a.name}" for a in node.names
                           if names is not None and a.name != "*" and a.name not in names
                           and f"{node.module}.{a.name}" not in modules]
        for target in re.findall(r'"-m",\s*"([\w.]+)"', text):
            if target.split(".")[0] in PACKAGES and target not in modules and f"{target}.__main__" not in modules:
                broken.append(f"{path.relative_to(ROOT)}: -m {target}")
            elif target in modules and modules[target].name == "__init__.py" and f"{target}.__main__" not in modules:
                broken.append(f"{path.relative_to(ROOT)}: -m {target} (a package without __main__)")
    assert not broken, "imports of modules or names that do not exist:\n" + "\n".join(sorted(broken))
