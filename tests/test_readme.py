"""README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow
def test_readme_python_blocks_run():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks, "README has no python examples"
  namespace: dict = {}  # blocks build on each other, as a reader runs them top to bottom
  for i, code in enumerate(blocks):
    exec(compile(code, f"README.md[python block {i}]", "exec"), namespace)
