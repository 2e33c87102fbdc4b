"""The code passes the project's linter (ruff, configured in pyproject.toml)."""

import shutil
import subprocess

import pytest
from conftest import PROJECT_ROOT


def test_ruff_check_passes():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    # --no-cache: a cached verdict outlived a deleted module once and hid two errors
    done = subprocess.run([ruff, "check", "--no-cache", "."], cwd=PROJECT_ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-1000:]


def project_imports() -> dict[str, set[str]]:
    """Every module of ``tasks`` and ``flows`` -> what it imports (anywhere in its code, lazy
    imports included): project modules by name, other packages by their top-level name."""
    import ast

    names = {}
    for package in ("tasks", "flows"):
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    modules = {}
    for name, path in names.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from tasks.engine import backend_compiled`
                    full = f"{node.module}.{alias.name}"
                    imported.add(full if full in names else node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        modules[name] = {m if m.split(".")[0] in ("tasks", "flows") else m.split(".")[0]
                         for m in imported}
    return modules


def reachable(modules: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in modules.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


#: What the search stands on: none of them imports ``tasks.search`` (the flows' parameter
#: models, the trial key, the data, the engine, the trial task).
BELOW_SEARCH = ("tasks.run_options", "tasks.config", "tasks.durations", "tasks.settings",
                "tasks.data", "tasks.engine", "tasks.trial")


def in_layer(name: str, layers: tuple[str, ...]) -> bool:
    """Whether module ``name`` is one of ``layers`` or inside one of those packages."""
    return any(name == layer or name.startswith(layer + ".") for layer in layers)


def test_the_layers_hold():
    """The engine imports neither Prefect nor the reports nor the search; the search and the
    trial never import the reports; nothing below the search (:data:`BELOW_SEARCH`) imports
    it (lazy imports included, and whatever they import)."""
    modules = project_imports()
    assert len(modules) > 30, sorted(modules)
    for name in modules:
        below = reachable(modules, name)
        if in_layer(name, BELOW_SEARCH):
            upward = sorted(m for m in below if in_layer(m, ("tasks.search",)))
            assert not upward, f"{name} imports the search layer: {upward}"
        if name.startswith("tasks.engine"):
            assert not below & {"prefect", "prefect_dask", "distributed", "optuna"}, name
            assert not {m for m in below if m.startswith(("tasks.reports", "tasks.search",
                                                          "tasks.trial", "flows"))}, name
        if name.startswith(("tasks.search", "tasks.trial", "tasks.data")):
            assert not {m for m in below if m.startswith(("tasks.reports", "flows"))}, name


def test_no_import_cycle_between_project_modules():
    """``tasks`` and ``flows`` form a layered graph: walk every module's project imports."""
    modules = project_imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(modules.get(name, ())):
            if target not in modules:
                continue
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(modules):
        if name not in state:
            visit(name)
