"""Harness for the mysql backend: not written yet."""

import pytest


@pytest.fixture
def mysql_harness():
    pytest.fail("the mysql harness is not implemented yet")

HARNESS_CLASS = None
