"""What a new user hits from a clean clone (issue 19, item 7): install advice that can be followed."""

from __future__ import annotations

import re
from pathlib import Path

from workflow_retention.exceptions import BackendUnavailableError

ROOT = Path(__file__).resolve().parents[2]
#: The package is on no index: ``pip install 'workflow-retention[...]'`` cannot resolve anywhere.
UNRESOLVABLE = re.compile(r"pip install ['\"]?workflow-retention\[")


def test_a_missing_driver_says_how_to_install_it_from_the_checkout_or_the_wheel() -> None:
    message = str(BackendUnavailableError("PostgreSQL", "postgres", ImportError("No module named 'psycopg'")))
    assert not UNRESOLVABLE.search(message), message
    assert "pip install '.[postgres]'" in message and "[postgres]" in message and "psycopg" in message


def test_no_page_or_docstring_gives_install_advice_that_cannot_resolve() -> None:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted((ROOT / "workflow_retention").rglob("*.py"))]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in files
             for n, line in enumerate(p.read_text().splitlines(), 1) if UNRESOLVABLE.search(line)]
    assert found == []
