"""The import contracts in ``pyproject.toml`` hold for the tree, and a violation breaks them.

``make lint`` runs ``lint-imports`` on the installed packages. Here each contract is shown to
bite: a copy of one package with a forbidden import added is put ahead of the installed one on
``PYTHONPATH``, and ``lint-imports`` must fail naming the contract it breaks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(python_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if python_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(python_path), env.get("PYTHONPATH")]))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_contract() -> None:
    done = lint_imports()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("package", "source", "violation", "broken"),
    [
        (
            "opspawn_contracts",
            "libs/contracts/src/opspawn_contracts",
            "import opspawn_messaging.event_log",
            "The contracts import no other package of ours",
        ),
        (
            "scheduler",
            "services/scheduler/src/scheduler",
            "import gateway.app",
            "No service imports another service",
        ),
        (
            "opspawn_readmodel",
            "libs/readmodel/src/opspawn_readmodel",
            "import opspawn_cli.main",
            "Libraries never import services or applications",
        ),
    ],
    ids=["contracts-import-messaging", "service-imports-service", "lib-imports-app"],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, package: str, source: str, violation: str, broken: str
) -> None:
    copy = tmp_path / package
    shutil.copytree(ROOT / source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "layer_violation.py").write_text(f'"""A deliberate violation."""\n\n{violation}\n')

    done = lint_imports(python_path=tmp_path)

    assert done.returncode != 0, done.stdout
    assert f"{broken} BROKEN" in done.stdout, done.stdout
    assert f"{package}.layer_violation" in done.stdout
