"""The archive tests' S3 server: ``TEST_S3_ENDPOINT_URL`` if set (e.g. MinIO from docker-compose), else moto."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.archive.s3local import S3Unavailable, start_moto
from tests.services import missing


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    if os.environ.get("TEST_S3_ENDPOINT_URL"):
        yield os.environ["TEST_S3_ENDPOINT_URL"]
        return
    try:
        url, stop = start_moto()
    except S3Unavailable as exc:
        missing(str(exc))
    try:
        yield url
    finally:
        stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; dummy credentials through the AWS chain (the environment), as users give real ones."""
    import boto3

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, os.environ.get(name, value))
    bucket = f"archive-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket
