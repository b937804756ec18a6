"""The README stays true to the code: every setting documented, CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from workflow_retention.config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_variable_is_in_the_configuration_table() -> None:
    table = README[README.index("## Configuration"):README.index("## Backends")]
    missing = [name for name in VARIABLES if f"`{name}`" not in table]
    assert not missing, missing


def test_quickstart_is_two_commands_and_ci_runs_the_test_one() -> None:
    quick = README[README.index("## Quickstart"):README.index("## Command line")]
    commands = re.search(r"```sh\n(.*?)```", quick, re.S).group(1).strip().splitlines()
    assert [c.split("#")[0].strip() for c in commands] == ["make demo", "make test"]
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)


def test_every_registered_scheme_is_in_the_backends_table() -> None:
    from workflow_retention.backends import BACKENDS

    table = README[README.index("## Backends"):README.index("## Add to an existing Celery deployment")]
    for scheme in set(BACKENDS) - {"postgres"}:
        assert f"`{scheme}://" in table, scheme


def test_every_relative_link_in_the_docs_points_at_a_file() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_the_baseline_example_says_why_pyworkflow_fails_on_sqlite(tmp_path) -> None:
    """docs/examples/pyworkflow_purge.py on a store where pyworkflow's own purge hits its parent-reference bug."""
    import subprocess
    import sys
    from datetime import UTC, datetime, timedelta

    from workflow_retention.backends import by_url
    from workflow_retention.seed import generate

    url = f"sqlite:///{tmp_path}/store.db"
    runs = list(generate(300, now=datetime.now(UTC) - timedelta(minutes=1), seed=5, child_share=0.4))
    by_url(url).seed(runs)  # children that outlive their expired parents
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / "pyworkflow_purge.py"), url, "30"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done
    assert "pyworkflow-engine's own delete_old_runs failed: IntegrityError" in done.stderr
    assert "Traceback" not in done.stderr
