"""The layering of docs/architecture.md, as a rule: every import in the product obeys it.

Read statically (no module is imported): a module may import only from its own layer or the
ones below; nothing imports the tests or the benchmarks; no import cycle, counting imports
inside functions (they run too) and those under ``TYPE_CHECKING`` (a circle all the same for a
reader); an import inside a function that reaches into another package says why in a comment;
no module reads another package's data files. And sizes: no module over 300 lines but those the
document names (each under 400), no function over 50.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("broker_config", "workers", "healthcheck", "producer", "harness", "api", "cli")


def table_after(marker: str) -> list[list[str]]:
    """The rows of the table after ``marker`` in docs/architecture.md, as cells."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = []
    for line in text.split(marker, 1)[1].strip().splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def documented_layers() -> dict[str, int]:
    """``module prefix -> layer`` from the table after the marker in docs/architecture.md."""
    return {name: int(cells[0]) for cells in table_after("<!-- layers -->")
            for name in re.findall(r"`([\w.]+)`", cells[1])}


LAYERS = documented_layers()


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    nested: bool  # inside a function
    commented: bool  # a comment on its line or the line above


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def product_modules() -> dict[str, Path]:
    paths = [REPO / "host.py"] + [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    return {module_name(p): p for p in paths}


MODULES = product_modules()


def resolve(module: str, name: str | None) -> str:
    """``from module import name`` imports the submodule ``module.name`` when there is one."""
    if name and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


def imports_of(source: str, path: Path) -> Iterator[Import]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested |= {id(n) for child in node.body for n in ast.walk(child)}

    def made(target: str, node: ast.stmt) -> Import:
        here = lines[node.lineno - 1]
        above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
        return Import(source, target, node.lineno, id(node) in nested,
                      "#" in here or above.startswith("#"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield made(alias.name, node)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield made(resolve(node.module, alias.name), node)


def layer_of(module: str) -> int | None:
    """The layer of the longest documented prefix of ``module`` (None: not the product's)."""
    best = None
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


ALL = [i for source, path in MODULES.items() for i in imports_of(source, path)]
INTERNAL = [i for i in ALL if i.target.split(".")[0] in (*PACKAGES, "host")]


def top(module: str) -> str:
    return "healthcheck.policy" if module.startswith("healthcheck.policy") else module.split(".")[0]


class TestLayers:
    def test_the_documented_table_covers_every_package(self) -> None:
        assert set(LAYERS) >= {*PACKAGES, "host", "healthcheck.policy"}
        assert len(ALL) > 200 and len(MODULES) > 60  # the walk saw the product

    def test_nothing_imports_from_a_layer_above(self) -> None:
        upward = [f"{i.source}:{i.line} imports {i.target}" for i in INTERNAL
                  if (layer_of(i.target) or 0) > (layer_of(i.source) or 0)]
        assert upward == []

    def test_the_product_never_imports_tests_or_benchmarks(self) -> None:
        assert [f"{i.source}:{i.line}" for i in ALL
                if i.target.split(".")[0] in ("tests", "bench")] == []

    def test_no_import_cycle(self) -> None:
        graph: dict[str, set[str]] = {m: set() for m in MODULES}
        for i in INTERNAL:
            if i.target in MODULES and i.target != i.source:
                graph[i.source].add(i.target)
        cycles = []
        state: dict[str, int] = {}  # 1: on the current path, 2: done

        def visit(module: str, path: list[str]) -> None:
            state[module] = 1
            for nxt in sorted(graph[module]):
                if state.get(nxt) == 1:
                    cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
                elif nxt not in state:
                    visit(nxt, [*path, nxt])
            state[module] = 2

        for module in sorted(graph):
            if module not in state:
                visit(module, [module])
        assert cycles == []

    def test_an_import_inside_a_function_across_packages_says_why(self) -> None:
        hidden = [f"{i.source}:{i.line} imports {i.target}" for i in INTERNAL
                  if i.nested and top(i.target) != top(i.source) and not i.commented]
        assert hidden == []

    def test_no_module_reads_another_packages_data(self) -> None:
        foreign = []
        for source, path in MODULES.items():
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "files"
                        and node.args and isinstance(node.args[0], ast.Constant)):
                    owner = str(node.args[0].value).split(".")[0]
                    if owner != source.split(".")[0]:
                        foreign.append(f"{source}:{node.lineno} reads {owner}'s files")
        assert foreign == []


def documented_long_modules() -> dict[str, str]:
    """``path -> reason`` from the table after the marker in docs/architecture.md."""
    return {cells[0].strip("`"): cells[1] for cells in table_after("<!-- longer modules -->")}


MODULE_LINES, LONGER_LINES, FUNCTION_LINES = 300, 400, 50


class TestSizes:
    def test_no_module_over_300_lines_but_those_named_and_under_400(self) -> None:
        named = documented_long_modules()
        assert 0 < len(named) <= 3 and all(named.values())
        sizes = {str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines())
                 for p in MODULES.values()}
        assert set(named) <= set(sizes)
        over = {m: n for m, n in sizes.items()
                if n > (LONGER_LINES if m in named else MODULE_LINES)}
        assert over == {}

    def test_no_function_over_50_lines(self) -> None:
        long = []
        for source, path in MODULES.items():
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = (node.end_lineno or node.lineno) - node.lineno + 1
                    if n > FUNCTION_LINES:
                        long.append(f"{source}:{node.lineno} {node.name}: {n} lines")
        assert long == []
