"""The package's shape (issue 34, STYLE.md "Imports point down"): the import graph of rcdm/ has no cycle, not even
through imports inside functions; no module imports another's private name; function-local imports of rcdm modules
are few (the CLI may defer its imports for a fast --help); no module is over 400 lines."""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "rcdm"
MAX_LOCAL = 15          # function-local rcdm imports outside rcdm/cli/, each for an optional dependency or start-up
MAX_LINES = 400
LONG_MODULES = {
    # a module listed here is being changed elsewhere; remove it once it is under MAX_LINES (a test says when)
}
KNOWN_CYCLES = [
    # a cycle listed here is being removed by a change in progress; a test says when it is gone
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports(name: str, path: Path, known: dict[str, Path]):
    """(target module, imported names, line, function-local?) for every rcdm import of one module."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def local(node) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return True
        return False

    def never_imported(node) -> bool:
        """Under `if TYPE_CHECKING:` (never runs) or `if __name__ == "__main__":` (runs only when the file is the
        program, which Python loads as the module `__main__`, apart from the `rcdm.x` others import): no edge."""
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "__name__ == '__main__'"):
                return True
        return False

    package = name if is_package(path) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if never_imported(node):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "rcdm" and not target.startswith("rcdm."):
                continue
            for alias in node.names:  # `from . import x` / `from .pkg import sub` import the submodule
                sub = f"{target}.{alias.name}"
                if sub in known:
                    yield sub, [], node.lineno, local(node)
                else:
                    yield target, [alias.name], node.lineno, local(node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "rcdm" or alias.name.startswith("rcdm."):
                    yield alias.name, [], node.lineno, local(node)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("import_module", "importlib.import_module"):
            pass  # rcdm/__init__ and rcdm/report/__init__ load their public names lazily (PEP 562): the package
            # re-exports its submodules, which is downward


@cache  # every test reads the same tree: parse it once
def graph():
    known = modules()
    edges, private, local = {}, [], []
    for name, path in known.items():
        edges[name] = set()
        for target, names, line, is_local in imports(name, path, known):
            where = f"{path.relative_to(PKG.parent)}:{line}"
            if target == name:
                continue
            # a package's own submodules import from it, and it re-exports them: the package's __init__ is above
            # its children only if it imports nothing of theirs that imports it back; the cycle check sees that
            edges[name].add(target)
            private += [f"{where} imports {n} from {target}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
            if is_local and not name.startswith("rcdm.cli") and where not in local:
                local.append(where)  # one per import statement
    return edges, private, local


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    found = cycles(graph()[0])
    assert [c for c in found if c not in KNOWN_CYCLES] == []
    assert [c for c in KNOWN_CYCLES if c not in found] == [], "gone: remove it from KNOWN_CYCLES"


def test_no_private_name_imported_across_modules():
    _, private, _ = graph()
    assert private == []


def test_few_function_local_imports():
    _, _, local = graph()
    assert len(local) <= MAX_LOCAL, "\n".join(local)


def test_function_local_imports_say_why():
    """Each function-local rcdm import outside the CLI carries a comment on its line or the line above."""
    missing = []
    for where in graph()[2]:
        file, line = where.rsplit(":", 1)
        lines = (PKG.parent / file).read_text().splitlines()
        i = int(line) - 1
        if "#" not in lines[i] and "#" not in lines[i - 1]:
            missing.append(where)
    assert missing == []


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert {k: v for k, v in long.items() if k not in LONG_MODULES} == {}
    assert [k for k in LONG_MODULES if k not in long] == [], "short now: remove it from LONG_MODULES"
