"""The package's imports point down only (pyproject.toml's layers contract), and no module
reaches into another's private names: a refactor that needs one makes it public first."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_layers_contract_is_kept():
  pytest.importorskip("importlinter")
  exe = Path(sys.executable).with_name("lint-imports")
  assert exe.is_file(), f"no lint-imports next to {sys.executable}: pip install -e '.[test]'"
  out = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


def _private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_private_names_of_another():
  offenders = []
  for file in sorted((ROOT / "paced_jax").rglob("*.py")):
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("paced_jax"):
        offenders += [f"{file.relative_to(ROOT)}:{node.lineno}: from {node.module} import "
                      f"{a.name}" for a in node.names if _private(a.name)]
  assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)
