import pytest

from tests.support.forked import ForkServer


@pytest.fixture(scope="session")
def forkserver(tmp_path_factory):
    """Starts the SIGKILL tests' killed runs without an interpreter start each (tests/support/forkserver.py)."""
    server = ForkServer(tmp_path_factory.mktemp("forked"))
    yield server
    server.close()
