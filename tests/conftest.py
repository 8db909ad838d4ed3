import gc

import pytest

from tests.support.s3server import FaultProxy, running_server


def pytest_collection_finish(session):
    """Move everything imported by collection (torch, transformers, Lightning: ~370k objects) into the permanent
    generation: every full collection (resume.release's gc.collect, the interpreter's own) then skips it, which
    took 0.2-1.3 s each, and DataLoader workers forked afterwards do not touch (copy) those pages when they
    collect. Objects the tests create are collected as before."""
    gc.freeze()


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1, started once for the session when a test first asks for it
    (tests/support/s3server.py); take a bucket of your own with ``s3_server.bucket()``."""
    with running_server() as server:
        yield server


@pytest.fixture
def fault_proxy(s3_server):
    """A fault-injecting, request-logging proxy in front of the session's S3 server, for one test."""
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy
