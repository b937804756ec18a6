"""Harness for the sqlite backend: not written yet."""

import pytest


@pytest.fixture
def sqlite_harness():
    pytest.fail("the sqlite harness is not implemented yet")

HARNESS_CLASS = None
