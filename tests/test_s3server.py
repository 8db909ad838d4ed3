"""The loopback S3 server and the fault proxy the object-storage tests rely on: real HTTP, real clients."""

from __future__ import annotations

import botocore.exceptions
import pytest


def test_server_speaks_s3_to_boto3_and_honours_conditional_writes(s3_server):
    bucket = s3_server.bucket("self")
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="web/a.bin", Body=b"x" * 10)
    assert client.head_object(Bucket=bucket, Key="web/a.bin")["ContentLength"] == 10
    assert client.get_object(Bucket=bucket, Key="web/a.bin", Range="bytes=2-4")["Body"].read() == b"xxx"
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        client.put_object(Bucket=bucket, Key="web/a.bin", Body=b"y", IfNoneMatch="*")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_proxy_forwards_logs_and_injects_bounded_faults(s3_server, fault_proxy):
    bucket = s3_server.bucket("self")
    s3_server.client().put_object(Bucket=bucket, Key="code/b.bin", Body=b"0123456789")
    strict = s3_server.client(fault_proxy.endpoint_url, retries=1)
    assert strict.get_object(Bucket=bucket, Key="code/b.bin", Range="bytes=0-3")["Body"].read() == b"0123"
    [logged] = fault_proxy.requests("GET")
    assert (logged.status, logged.body_bytes, logged.range) == (206, 4, "bytes=0-3")

    fault_proxy.inject("503", times=1, match=lambda method, path: method == "GET")
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        strict.get_object(Bucket=bucket, Key="code/b.bin")
    assert raised.value.response["Error"]["Code"] == "SlowDown"
    assert strict.get_object(Bucket=bucket, Key="code/b.bin")["Body"].read() == b"0123456789"  # only once

    fault_proxy.inject("reset", times=1)
    with pytest.raises(botocore.exceptions.BotoCoreError):
        strict.get_object(Bucket=bucket, Key="code/b.bin")
    assert [entry.fault for entry in fault_proxy.requests("GET")][-3:] == ["503", None, "reset"]
