"""The package's public face: one list (``_MODULES``), restated once for type checkers, and light.

``agentkit/__init__.py`` imports its names only under ``TYPE_CHECKING``; at run time they come
from ``_MODULES`` on first use. Nothing but this test keeps the two in step, and nothing but the
last test keeps a sandbox worker's start free of the agent's dependencies.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import agentkit


def _type_checking_imports() -> set[tuple[str, str]]:
    """``(module, name)`` of every import under ``if TYPE_CHECKING:`` in ``agentkit/__init__``."""
    tree = ast.parse(Path(agentkit.__file__).read_text())
    blocks = [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    ]
    assert len(blocks) == 1
    imports: set[tuple[str, str]] = set()
    for statement in blocks[0].body:
        assert isinstance(statement, ast.ImportFrom), ast.unparse(statement)
        assert statement.module is not None
        for alias in statement.names:
            # ``X as X`` is what marks a name as re-exported for mypy's strict mode.
            assert alias.asname == alias.name, f"{alias.name} is imported without 'as {alias.name}'"
            imports.add((statement.module, alias.name))
    return imports


def _listed() -> list[tuple[str, str]]:
    return [(module, name) for module, names in agentkit._MODULES.items() for name in names]


def test_each_public_name_is_listed_once() -> None:
    names = [name for _, name in _listed()]
    assert len(names) == len(set(names))


def test_the_type_checking_imports_restate_the_list() -> None:
    assert _type_checking_imports() == set(_listed())


def test_all_is_the_list_of_names() -> None:
    assert sorted(agentkit.__all__) == sorted(name for _, name in _listed())
    assert set(agentkit.__all__) <= set(dir(agentkit))


def test_every_public_name_is_the_object_of_its_module() -> None:
    for module, name in _listed():
        assert getattr(agentkit, name) is getattr(importlib.import_module(module), name)


def test_a_sandbox_worker_does_not_import_the_agents_dependencies() -> None:
    # What a worker imports: its own module (via the package and subpackage ``__init__``) and the
    # tools it preloads.
    code = (
        "import sys, agentkit.sandbox.worker, agentkit.tools.builtin\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'httpx', 'nats'}))"
    )
    completed = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert completed.stdout.strip() == "[]"
