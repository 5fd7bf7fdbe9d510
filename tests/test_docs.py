"""Every ```python block in the README and docs/ runs, in order, one namespace per page."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("page", [p for p in PAGES if BLOCK.search(p.read_text())],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(page, tmp_path, monkeypatch, minilm_path):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for number, block in enumerate(BLOCK.findall(page.read_text()), 1):
        try:
            exec(compile(block, f"{page.name} block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{page.relative_to(ROOT)}, python block {number} failed: {error!r}") from error


def test_api_reference_is_up_to_date():
    import subprocess
    import sys

    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_api_docs.py"), "--check"])
    assert check.returncode == 0, "docs/api.md is out of date: run python scripts/make_api_docs.py"
