"""The daemon's import structure: no module imports itself back through others.

The one-way layers themselves are import-linter contracts (pyproject.toml, run by `make test` as
`lint-imports`); a contract on layers does not see a cycle inside one layer, this test does.
"""
from __future__ import annotations

import grimp


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), iteratively."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in edges:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return found


def test_the_daemon_and_its_packages_have_no_import_cycle():
    graph = grimp.build_graph("edgeinfer", "edgeinfer_bench", "edgeinfer_client", "edgeinfer_proto")
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    for name, body in {"a": "from cyc import b\n", "b": "from cyc import a\n", "c": "from cyc import a\n"}.items():
        (tmp_path / "cyc").mkdir(exist_ok=True)
        (tmp_path / "cyc" / f"{name}.py").write_text(body)
    (tmp_path / "cyc" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles(grimp.build_graph("cyc")) == [["cyc.a", "cyc.b"]]
