"""Figures and pipeline facts that cannot go stale: the README's evaluation tables are the
committed metrics, and each DVC stage depends on every module it runs."""

import json

from obf.evaluate.report import render_conversions, render_table

from .conftest import ROOT


def _metrics() -> dict:
    return json.loads((ROOT / "data" / "eval" / "metrics.json").read_text())


def test_the_readme_evaluation_table_is_the_committed_metrics():
    """`dvc repro` writes data/eval/metrics.json; the README shows its table as `obf evaluate`
    renders it, to the last digit (a table edited by hand, or left behind by a new run, fails)."""
    assert render_table(_metrics()) in (ROOT / "README.md").read_text()


def test_the_readme_conversions_table_is_the_committed_metrics():
    lines = render_conversions(_metrics()["conversions"])
    start = next(i for i, line in enumerate(lines) if line.startswith("| conversion |"))
    end = next(i for i in range(start, len(lines) + 1) if i == len(lines) or not lines[i].startswith("|"))
    assert "\n".join(lines[start:end]) in (ROOT / "README.md").read_text()


def _obf_imports(path) -> set[str]:
    """The obf modules a file imports, at any level (function-level imports included)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([node.module] + [f"{node.module}.{a.name}" for a in node.names]
                 if isinstance(node, ast.ImportFrom) and node.module else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        out.update(n for n in names if n.startswith("obf.") and _module_file(n) is not None)
    return out


def _module_file(name: str):
    base = ROOT / name.replace(".", "/")
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


def test_every_dvc_stage_depends_on_every_module_it_imports():
    """A module a stage runs that dvc.yaml does not list leaves `dvc status` clean after an edit,
    and `dvc repro` reuses a stale output; this walks each stage's imports to the end."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, entry in (("ingest", "obf.data.ingest"), ("train", "obf.train"), ("evaluate", "obf.evaluate"),
                         ("export", "obf.export")):
        deps = [d.rstrip("/") for d in stages[stage]["deps"]]
        seen, todo = set(), [entry]
        assert {"obf/cli.py", "obf/stages.py"} <= set(deps), (
            f"dvc.yaml stage {stage}: its command runs obf/cli.py and obf/stages.py"
        )
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += _obf_imports(_module_file(name))
        files = {str(_module_file(n).relative_to(ROOT)) for n in seen}
        missing = sorted(f for f in files if not any(f == d or f.startswith(d + "/") for d in deps))
        assert not missing, f"dvc.yaml stage {stage} lacks deps {missing}"


def test_the_evaluation_samples_decode_as_obf_generate_does():
    """The report's samples show what users get: params.yaml's and the built-in evaluate decoding
    are `obf generate`'s default for continue."""
    import yaml

    from obf.core.config import EvaluateConfig
    from obf.generate.sampling import DECODING

    want = {k: DECODING["continue"][k] for k in ("temperature", "top_k", "top_p", "min_p", "share_guard",
                                                 "match_surprise")}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["evaluate"]
    assert {k: params[k] for k in want} == want
    assert {k: getattr(EvaluateConfig(), k) for k in want} == want


def test_no_import_circle_in_the_library():
    """import-linter (.ci/run) keeps the layers apart; this keeps modules inside a layer from
    importing each other in a circle, function-level imports included."""

    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "obf").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {n for n in _obf_imports(path) if _module_file(n).name != "__init__.py" and n != name}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node):] + [node]))
        if node not in done:
            for nxt in sorted(graph.get(node, ())):
                visit(nxt, [*path, node])
            done.add(node)

    for node in sorted(graph):
        visit(node, [])
