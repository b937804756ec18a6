"""The dynamodb:// URL and the backend's settings (no service needed: nothing here connects)."""

from __future__ import annotations

import pytest

from workflow_retention.backends import by_url
from workflow_retention.backends.dynamodb import DynamoDBBackend
from workflow_retention.exceptions import ConfigurationError

BASE = "dynamodb://pyworkflow?region=eu-west-1"
WCU = "max_wcu_per_second must be a number of write capacity units per second above 0 and up to 100000"
DEADLINE = "retry_deadline must be a number of seconds above 0 and up to 86400"


def dynamodb(url: str, **options: object) -> DynamoDBBackend:
    backend = by_url(url, **options)
    assert isinstance(backend, DynamoDBBackend)
    return backend


def test_url_form_and_defaults() -> None:
    backend = dynamodb(BASE + "&endpoint_url=http://127.0.0.1:8000&max_wcu_per_second=250&retry_deadline=2m",
                       batch_size=None)
    assert (backend.table_name, backend.region, backend.endpoint_url) == ("pyworkflow", "eu-west-1",
                                                                           "http://127.0.0.1:8000")
    assert (backend.max_wcu, backend.retry_deadline, backend.batch_size) == (250.0, 120.0, 500)
    assert dynamodb(BASE).retry_deadline == 60.0 and dynamodb(BASE + "&retry_deadline=7.5").retry_deadline == 7.5


@pytest.mark.parametrize("url", [
    "dynamodb://AKIAEXAMPLE:wJalrSECRET@pyworkflow?region=us-east-1",
    "dynamodb://AKIAEXAMPLE@pyworkflow?region=us-east-1",
    "dynamodb://pyworkflow?region=us-east-1&aws_secret_access_key=wJalrSECRET",
    "dynamodb://pyworkflow?region=us-east-1&aws_session_token=wJalrSECRET",
])
def test_credentials_in_the_url_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ConfigurationError, match="credential") as caught:
        by_url(url)
    assert "wJalrSECRET" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)


@pytest.mark.parametrize(("url", "message"), [
    ("dynamodb://?region=us-east-1", "dynamodb://TABLE"),
    ("dynamodb://ab?region=us-east-1", "table name"),
    ("dynamodb://pyworkflow/extra?region=us-east-1", "dynamodb://TABLE"),
    ("dynamodb://pyworkflow?region=us-east-1&colour=blue", "unknown parameter.*colour"),
    ("dynamodb://pyworkflow?region=US_EAST", "region must be an AWS region"),
    ("dynamodb://pyworkflow?region=us-east-1&endpoint_url=localhost:8000", "endpoint_url must look like"),
    ("dynamodb://pyworkflow?region=us-east-1&endpoint_url=http://u:p@localhost", "endpoint_url must not"),
    ("dynamodb://pyworkflow?region=us-east-1&max_wcu_per_second=0", WCU),
    ("dynamodb://pyworkflow?region=us-east-1&max_wcu_per_second=lots", WCU),
    ("dynamodb://pyworkflow?region=us-east-1&max_wcu_per_second=100001", WCU),
    ("dynamodb://pyworkflow?region=us-east-1&retry_deadline=-5", DEADLINE),
    ("dynamodb://pyworkflow?region=us-east-1&retry_deadline=soon", DEADLINE + r" \(e\.g\. 10 or 90s\)"),
    ("dynamodb://pyworkflow?region=us-east-1&retry_deadline=2d", "retry_deadline: expected a duration .* to 1d"),
])
def test_bad_settings_name_the_setting_and_the_expected_form(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        by_url(url)


def test_repr_and_url_carry_no_secret() -> None:
    backend = by_url(BASE)
    assert repr(backend) == "<DynamoDBBackend dynamodb://pyworkflow?region=eu-west-1>"


@pytest.mark.parametrize(("value", "message"), [
    *((v, "timeout must be a number of seconds above 0 and up to 3600") for v in ("0", "-1", "soon", "inf", "3601")),
    ("2h", "timeout: expected a duration .* to 1h"),
])
def test_a_bad_timeout_names_the_setting(value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        by_url(BASE + f"&timeout={value}")


@pytest.mark.parametrize("workers", [0, 65, True, 2.5])
def test_workers_must_be_an_integer_from_1_to_64(workers: object) -> None:
    with pytest.raises(ConfigurationError, match="workers must be an integer from 1 to 64"):
        by_url(BASE, workers=workers)
