"""Write the families table of each docs/tasks page from the testing kit's registry (taskzoo.testing.kit.KIT),
whose every claim tests/test_contract.py checks.

    python scripts/make_family_tables.py          # rewrite the tables in docs/tasks/*.md
    python scripts/make_family_tables.py --check  # exit 1 if a page's table is out of date (the tests run this)
"""

import sys
from pathlib import Path

from taskzoo.testing.kit import KIT, with_table

PAGES = Path(__file__).resolve().parent.parent / "docs" / "tasks"


def main(check: bool) -> int:
    stale = []
    for task in dict.fromkeys(family.task for family in KIT):
        page = PAGES / f"{task}.md"
        text = page.read_text()
        current = with_table(text, task)
        if current != text:
            stale.append(page.name)
            if not check:
                page.write_text(current)
    if check and stale:
        print(f"Out of date: {', '.join(stale)}; run python scripts/make_family_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
