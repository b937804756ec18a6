"""What a review of explain, audit and the CLI's errors found: each case, fixed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from tests.services import clear_retention_env
from workflow_retention import cli
from workflow_retention.backends import by_url
from workflow_retention.exceptions import ConfigurationError
from workflow_retention.report import Census


@pytest.mark.parametrize("cutoff", [datetime(9999, 12, 30, 23, 59, 59, tzinfo=UTC), datetime(1, 1, 2, tzinfo=UTC)])
def test_a_cutoff_at_the_ends_of_the_calendar_is_a_configuration_error(cutoff: datetime) -> None:
    backend = by_url("memory://review-cutoff")
    for call in (lambda: backend.delete_old_runs(cutoff), lambda: backend.explain("run_x", cutoff),
                 lambda: backend.audit(older_than=cutoff)):
        with pytest.raises(ConfigurationError, match="out of range"):
            call()


def test_the_cli_refuses_such_a_cutoff_with_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    clear_retention_env(monkeypatch)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    assert cli.main(["purge", "--storage", url, "--older-than", "9999-12-30T23:59:59+00:00",
                     "--allow-recent-cutoff"]) == cli.EXIT_USAGE


def test_a_stored_status_with_terminal_escapes_is_counted_escaped() -> None:
    census = Census()
    census.count_status("done\x1b]0;pwned\x07", 2)
    assert list(census.runs_by_status) == ["done\\x1b]0;pwned\\x07"]


def test_a_drivers_traceback_shows_only_with_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    def warn_with_traceback() -> None:
        try:
            raise OSError("connection refused")
        except OSError:
            logging.getLogger("cassandra.cluster").warning("Failed to connect", exc_info=True)

    for verbose, shown in ((False, False), (True, True)):
        cli._logging(verbose, [])
        warn_with_traceback()
        err = capsys.readouterr().err
        assert "WARNING cassandra.cluster: Failed to connect" in err
        assert ("Traceback" in err) is shown
    cli._logging(False, [])


# -- the SQL row budget follows time (issue 17) ---------------------------------------------------------


def test_the_row_budget_grows_only_from_rows_counted_and_at_most_doubles() -> None:
    from workflow_retention.backends.sql.client import next_budget

    # quick, and 40,000 rows deleted: towards 80 % of the target at that rate, at most twice the budget
    assert next_budget(40_000, 40_000, 0.05, 0.5, 1000, 200_000) == 80_000
    assert next_budget(40_000, 40_000, 0.2, 0.5, 1000, 200_000) == 80_000
    # a quick transaction that deleted few rows says little: the budget grows by what it measured only
    assert next_budget(40_000, 1_000, 0.2, 0.5, 1000, 200_000) == 40_000
    # rows not counted (a stream sweep): never grows
    assert next_budget(40_000, None, 0.01, 0.5, 1000, 200_000) == 40_000
    # never above max_rows, and slow transactions shrink it in proportion, not below the floor
    assert next_budget(150_000, 150_000, 0.1, 0.5, 1000, 200_000) == 200_000
    assert next_budget(40_000, 40_000, 1.0, 0.5, 1000, 200_000) == 20_000
    assert next_budget(2_000, 2_000, 100.0, 0.5, 1000, 200_000) == 1000
