"""The recordings bucket: created on moto from template.yaml, as locked down as the template says."""

from __future__ import annotations

from typing import Any

import boto3

from devstack.template import load_template
from tests.conftest import MotoStack


def _s3(ms: MotoStack) -> object:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("s3", endpoint_url=ms.moto.endpoint)


def test_the_recordings_bucket_is_encrypted_private_and_expires_recordings_after_the_retention_parameter(
    moto_stack: MotoStack,
) -> None:
    s3: Any = _s3(moto_stack)
    name = moto_stack.env["RECORDINGS_BUCKET"]
    assert name == moto_stack.stack.buckets["RecordingsBucket"]

    encryption = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
    assert encryption[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    [rule] = s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
    default_days = load_template()["Parameters"]["RecordingRetentionDays"]["Default"]
    assert (rule["Status"], rule["Expiration"]["Days"]) == ("Enabled", default_days)


def test_the_functions_are_told_the_bucket_the_template_names() -> None:
    variables = load_template()["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["RECORDINGS_BUCKET"] == {"Ref": "RecordingsBucket"}
