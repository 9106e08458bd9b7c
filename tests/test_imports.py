"""The package's shape: no import circles, and the light parts (config, registries, samplers, the command line's
--help) import no MindSpore."""
import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "ddpm_ms")


def _module_name(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph():
    """{module: {ddpm_ms modules it imports anywhere in its body, deferred imports included}}."""
    graph = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            module = _module_name(path)
            package = module if name == "__init__.py" else module.rsplit(".", 1)[0]
            deps = set()
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names if a.name.startswith("ddpm_ms")}
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        parts = package.split(".")
                        parts = parts[:len(parts) - node.level + 1]
                        base = ".".join(parts + ([node.module] if node.module else []))
                    if not base.startswith("ddpm_ms"):
                        continue
                    for alias in node.names:   # "from . import x" names a module; "from .m import f" names m
                        sub = f"{base}.{alias.name}"
                        deps.add(sub if os.path.exists(os.path.join(ROOT, *sub.split(".")) + ".py") else base)
            graph[module] = deps - {module}
    return graph


def find_cycle(graph):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if dep == "ddpm_ms" or dep not in graph:   # the package's lazy __init__ imports nothing at import time
                continue
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, stack + [dep])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_no_module_imports_another_in_a_circle():
    graph = import_graph()
    assert len(graph) > 25 and "ddpm_ms.build" in graph["ddpm_ms.trainer"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_checkpoint_reads_and_writes_only():
    """checkpoint.py builds no model: it imports neither the factories, the trainer nor the network."""
    deps = import_graph()["ddpm_ms.checkpoint"]
    assert not deps & {"ddpm_ms.build", "ddpm_ms.trainer", "ddpm_ms.model", "ddpm_ms.run_folder"}, deps


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=False)


@pytest.mark.parametrize("code", [
    "import ddpm_ms.config",
    "import ddpm_ms; ddpm_ms.load_config('tiny.yaml'); ddpm_ms.SAMPLERS.names()",
    "import ddpm_ms.samplers, ddpm_ms.registries, ddpm_ms.betas, ddpm_ms.weighting",
    "from ddpm_ms.commands import main; assert main(['--help']) == 0",
    "from ddpm_ms.commands import main\nfor c in ('train', 'sample', 'evaluate', 'export', 'compare-samplers'):\n"
    "    try:\n        main([c, '--help'])\n    except SystemExit as e:\n        assert e.code == 0, c",
])
def test_light_parts_import_no_mindspore(code):
    out = _run(code + "\nimport sys\nassert 'mindspore' not in sys.modules, sorted(m for m in sys.modules "
                      "if m.startswith('ddpm_ms'))")
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_no_mindspore_check_can_fail():
    out = _run("import ddpm_ms.model\nimport sys\nassert 'mindspore' not in sys.modules")
    assert out.returncode != 0 and "AssertionError" in out.stderr
