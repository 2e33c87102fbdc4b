"""The code passes the project's linter (ruff, configured in pyproject.toml)."""

import shutil
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT


def test_ruff_check_passes():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    done = subprocess.run([ruff, "check", "."], cwd=PROJECT_ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-1000:]


def test_no_import_cycle_between_project_modules():
    """``tasks`` and ``flows`` form a layered graph: walk every module's project imports."""
    import ast

    modules = {}
    for package in ("tasks", "flows"):
        for path in (PROJECT_ROOT / package).glob("*.py"):
            name = f"{package}.{path.stem}"
            tree = ast.parse(path.read_text())
            imported = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    if node.module in ("tasks", "flows"):
                        imported |= {f"{node.module}.{a.name}" for a in node.names}
                    else:
                        imported.add(node.module)
                elif isinstance(node, ast.Import):
                    imported |= {a.name for a in node.names}
            modules[name] = {m for m in imported if m.split(".")[0] in ("tasks", "flows")}
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
    assert len(modules) > 10, sys.path
