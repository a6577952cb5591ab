"""The layering of the code base: which package may import which, read from the source (AST).

Dependencies point one way: services → `servers.mesh` → client library (`clients`) →
generated code (`shieldx`). A service never imports another service; `servers.mesh` imports
no service; the client library never imports `servers` (not at module level, not inside a
function); the CLI (`servers.cli`) starts servers, so it may import any of them. Between these
packages there is no import cycle.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = ("servers", "clients")
KNOWN_CROSSINGS: set[tuple[str, str]] = {
    ("servers.credits.moves", "servers.sharding.domain"),
    ("servers.credits.moves", "servers.sharding.rebalance"),
    ("servers.credits.service", "servers.sharding.follower"),
    ("servers.credits.shards", "servers.sharding.domain"),
    ("servers.credits.shards", "servers.sharding.follower"),
    ("servers.credits.shards", "servers.sharding.topology"),
}
"""Service-to-service imports not yet replaced by the contract (issue 16, item 1: credits still
follows the topology with sharding's follower and moves accounts with sharding's types). The list
may only shrink: a test fails when an entry no longer occurs, so a removed crossing is removed here."""


@dataclass(frozen=True)
class Import:
    """One import statement: the module it is in and the module it names."""

    importer: str
    imported: str
    line: int


def module_name(path: Path) -> str:
    """`servers/credits/store.py` → `servers.credits.store`; a package's `__init__` is the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> Iterator[Path]:
    """Every Python file of the servers and the client library."""
    for top in SOURCE_ROOTS:
        yield from sorted((ROOT / top).rglob("*.py"))


def imports_of(path: Path) -> Iterator[Import]:
    """Every import in `path`, wherever it is (module level or inside a function), resolved to absolute names."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from servers.credits import moves` imports the module servers.credits.moves.
                yield Import(importer, f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno)


@functools.cache
def all_imports() -> list[Import]:
    """The imports of every source file."""
    return [found for path in source_files() for found in imports_of(path)]


def layer(module: str) -> str:
    """The package a module belongs to for layering: `servers.<service>`, `servers.mesh`, `clients`, ..."""
    parts = module.split(".")
    if parts[0] == "servers" and len(parts) > 1:
        return f"servers.{parts[1]}"
    return parts[0]


def owner(module: str) -> str:
    """The module an import names, cut back to a known module (`servers.x.y.Name` → `servers.x.y`)."""
    parts = module.split(".")
    while len(parts) > 1:
        candidate = ROOT.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            break
        parts.pop()
    return ".".join(parts)


def service_crossings(imports: list[Import]) -> set[tuple[str, str]]:
    """(importer, imported module) pairs where a service (or the runtime) imports another service or the CLI."""
    crossings = set()
    for found in imports:
        source, target = layer(found.importer), layer(found.imported)
        if not (source.startswith("servers.") and target.startswith("servers.")):
            continue
        if source in (target, "servers.cli") or target == "servers.mesh":
            continue
        crossings.add((found.importer, owner(found.imported)))
    return crossings


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in edges.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_imports_inside_functions() -> None:
    module = ROOT / "servers" / "cli" / "credits.py"
    assert any(
        found.imported.startswith("servers.credits.rebuild") and found.line > 1 for found in imports_of(module)
    ), "the CLI imports the rebuild inside a function; the walk must see it"
    assert layer("servers.credits.store") == "servers.credits"
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_the_client_library_never_imports_a_server_package() -> None:
    offending = [
        found
        for found in all_imports()
        if layer(found.importer) == "clients" and layer(found.imported).startswith("servers")
    ]
    assert not offending, [f"{f.importer}:{f.line} imports {f.imported}" for f in offending]


def test_the_runtime_imports_no_service() -> None:
    offending = [
        found
        for found in all_imports()
        if layer(found.importer) == "servers.mesh"
        and layer(found.imported).startswith("servers.")
        and layer(found.imported) != "servers.mesh"
    ]
    assert not offending, [f"{f.importer}:{f.line} imports {f.imported}" for f in offending]


def test_no_service_imports_another_service() -> None:
    crossings = service_crossings(all_imports())
    assert crossings <= KNOWN_CROSSINGS, sorted(crossings - KNOWN_CROSSINGS)


@pytest.mark.parametrize("crossing", sorted(KNOWN_CROSSINGS))
def test_a_known_crossing_is_still_there_until_it_is_removed_from_the_list(crossing: tuple[str, str]) -> None:
    assert crossing in service_crossings(all_imports()), f"{crossing} is gone: remove it from KNOWN_CROSSINGS"


def test_no_import_cycle_between_packages() -> None:
    ours = ("servers", "clients", "shieldx")
    edges: dict[str, set[str]] = defaultdict(set)
    for found in all_imports():
        source, target = layer(found.importer), layer(found.imported)
        if source != target and target.split(".")[0] in ours:
            edges[source].add(target)
    assert edges["servers.mesh"] and edges["clients"], "the walk found the packages' imports"
    assert not cycles(edges), cycles(edges)
