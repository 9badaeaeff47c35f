"""The package's layers: no module imports from a layer above its own (see CONTRIBUTING.md)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "npcrepro"

#: Top-level module or package of npcrepro -> layer (higher may import lower, never the reverse).
LAYERS = {
    "errors": 0, "paths": 0, "pages": 0, "gz": 0,
    "io": 1, "metrics": 1, "losses": 1, "transforms": 1, "models": 1, "datasets": 1, "phantom": 1,
    "papers": 1, "recipes": 1, "plots": 1, "dicom": 1,
    "engine": 2, "evaluation": 2, "claims": 2, "profiles": 2, "scoring": 2,
    "chapters": 3,
    "book": 4, "cli": 4, "viz": 4, "summary": 4, "webassets": 4, "browsercheck": 4, "viewercheck": 4,
    "chapterlog": 4, "plan": 4, "calibration": 4, "quality": 4, "leftovers": 4, "predict": 4, "__main__": 4,
}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "npcrepro" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(PKG.parent).with_suffix("")
    here = ".".join(rel.parts)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: -node.level] if path.name != "__init__.py" else here.split(".")[: len(here.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            if mod == "npcrepro":
                out += [(node.lineno, f"npcrepro.{a.name}") for a in node.names]
    return out


def _modules():
    return sorted(p for p in PKG.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = sorted({p.relative_to(PKG).parts[0].removesuffix(".py") for p in _modules()}
                     - set(LAYERS) - {"__init__"})
    assert not missing, f"give these a layer in LAYERS: {missing}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_upward_import(path):
    top = path.relative_to(PKG).parts[0].removesuffix(".py")
    if top == "__init__":
        return
    mine = LAYERS[top]
    bad = []
    for line, mod in _imports(path):
        other = _top(mod)
        if other is None or other == top or other not in LAYERS:
            continue
        if LAYERS[other] > mine:
            bad.append(f"line {line}: {mod} (layer {LAYERS[other]})")
    assert not bad, f"{path.relative_to(PKG)} (layer {mine}) imports upward: {bad}"


def test_nothing_below_the_chapter_layer_imports_a_chapter():
    for path in _modules():
        top = path.relative_to(PKG).parts[0].removesuffix(".py")
        if LAYERS.get(top, 4) >= 3:
            continue
        for line, mod in _imports(path):
            assert _top(mod) != "chapters", f"{path.relative_to(PKG)}:{line} imports {mod}"


def test_chapter_modules_are_small():
    big = {str(p.relative_to(PKG)): n for p in (PKG / "chapters").rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) >= 500}
    assert not big, f"chapter modules of 500 lines or more: {big}"


def test_no_paper_key_below_the_chapter_layer():
    """What is particular to one paper lives in its chapter folder: below ``chapters/`` no module is named
    after a paper, and no code names one (module, function, class, argument or attribute names, and
    word-like strings such as registry names). Prose may cite a paper (a docstring saying which paper
    uses a block, a caption)."""
    import re

    from npcrepro import pages

    keys = list(pages.papers())
    assert len(keys) >= 5
    pattern = re.compile("|".join(keys))
    found = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "chapters":
            continue
        hits = [f"module name {rel}"] if pattern.search(path.stem) else []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = {ast.Name: "id", ast.Attribute: "attr", ast.FunctionDef: "name", ast.ClassDef: "name",
                     ast.alias: "name", ast.arg: "arg", ast.keyword: "arg"}
            text = getattr(node, names[type(node)], None) if type(node) in names else None
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and not re.search(r"\s", node.value):
                text = node.value
            if text and pattern.search(text):
                hits.append(f"line {node.lineno}: {text}")
        if hits:
            found[str(rel)] = hits
    assert not found, f"paper keys below the chapter layer: {found}"


def test_no_module_over_600_lines():
    """Shared layers stay organised by kind: a module that outgrows 600 lines is split (one network
    architecture, one loss family, one concern of the engine per module)."""
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not big, f"modules over 600 lines: {big}"


def _module_graph() -> dict[str, set[str]]:
    """Module -> the npcrepro modules it imports anywhere in its file (inside functions too). ``from pkg
    import sub`` of a submodule counts as importing ``pkg.sub`` only, not ``pkg``'s ``__init__``."""
    names = {".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in _modules()}
    graph = {}
    for name, path in names.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + [node.module or ""]
                                ).strip(".") if node.level else node.module or ""
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in names]
                found = subs + ([base] if len(subs) < len(node.names) else [])
            else:
                continue
            for mod in found:
                while mod and mod not in names:
                    mod = mod.rpartition(".")[0]
                if mod and mod not in (name, "npcrepro"):
                    deps.add(mod)
        graph[name] = deps
    return graph


def test_no_import_circles():
    """No two modules import each other, directly or around a loop (imports inside functions count)."""
    graph, index, low, stack, on, circles = _module_graph(), {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_circle_check_finds_a_circle(monkeypatch):
    loop = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    monkeypatch.setattr(sys.modules[__name__], "_module_graph", lambda: loop)
    with pytest.raises(AssertionError, match=r"\['a', 'b', 'c'\]"):
        test_no_import_circles()
