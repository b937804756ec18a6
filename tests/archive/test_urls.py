"""Archive URLs: refused before anything is read, naming the setting, never echoing what may be a secret."""

from __future__ import annotations

import pytest

from workflow_retention.archive import open_archive
from workflow_retention.exceptions import ConfigurationError


@pytest.mark.parametrize("url", [
    "s3://bucket/p?endpoint_url=http://minio:s3cr3tpw@h:9000",  # credentials in the endpoint: not from the chain
    "s3://bucket/p?endpoint_url=https://AKIA@h",
])
def test_credentials_in_the_endpoint_url_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="credentials") as caught:
        open_archive(url)
    assert "s3cr3tpw" not in str(caught.value) and "AKIA" not in str(caught.value)


@pytest.mark.parametrize("url", [
    "s3://bucket/p?region=us-east-1&foo=s3cr3tpw",
    "s3://bucket/p?sig=s3cr3tpw&x-amz-credential=s3cr3tpw",
    "s3://bucket/p#s3cr3tpw",
])
def test_an_unknown_parameter_or_fragment_is_refused_without_its_value(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_archive(url)
    assert "PYWORKFLOW_RETENTION_ARCHIVE_URL" in str(caught.value)
    assert "s3cr3tpw" not in str(caught.value)
