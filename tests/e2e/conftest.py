import pytest

from tests.support.forked import ForkServer


@pytest.fixture(scope="session")
def forkserver(tmp_path_factory):
    """Starts the SIGKILL tests' killed runs without an interpreter start each (tests/support/forkserver.py); the S3
    client's modules imported once too, for the runs that checkpoint to the loopback S3 server."""
    server = ForkServer(tmp_path_factory.mktemp("forked"), preload=("s3fs",))
    yield server
    server.close()


@pytest.fixture(scope="session")
def hf_forkserver(tmp_path_factory):
    """The same for tests/support/hf_trainer_child.py's killed runs: transformers imported once, its environment."""
    from tests.support import hf_trainer_child

    server = ForkServer(
        tmp_path_factory.mktemp("hf_forked"),
        preload=("tests.support.hf_trainer_child",),
        env=hf_trainer_child.child_env(),
    )
    yield server
    server.close()
