"""Real `soma serve` processes with the real CPU models, on free loopback ports."""

from pathlib import Path

import grpc
import pytest

from soma.client import open_channel
from soma.launcher import start_server

pytestmark = pytest.mark.integration

# Short answers keep the suite fast; the limits are lowered so over-long input is cheap to send.
SERVER_ENV = {
    "SOMA_TEACHER__DEFAULT_MAX_NEW_TOKENS": "12",
    "SOMA_SURROGATE__DEFAULT_MAX_NEW_TOKENS": "12",
    "SOMA_DIALOGUE__MAX_QUERY_CHARS": "2000",
    "SOMA_TEACHER__MAX_NEW_TOKENS_LIMIT": "512",
    "SOMA_SERVER__GRACE_PERIOD_S": "60",
}


@pytest.fixture(scope="session")
def server_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("soma-serve")


@pytest.fixture(scope="session")
def all_server(server_dir):
    """`soma serve --target all`, shared by the tests that do not stop it."""
    env = {
        **SERVER_ENV,
        "SOMA_DIALOGUE__SESSION_DB": str(server_dir / "sessions.db"),
        "SOMA_ADAPTERS__LOCAL_DIR": str(server_dir / "adapters"),
        "SOMA_JOBS__LOCAL_DIR": str(server_dir / "jobs"),
    }
    server = start_server("all", env=env, log_path=server_dir / "all.log")
    yield server
    assert server.stop() == 0, (server_dir / "all.log").read_text()[-3000:]


@pytest.fixture(scope="session")
def channel(all_server):
    with open_channel(all_server.address, all_server.api_key) as ch:  # the key the server made
        yield ch


@pytest.fixture(scope="session")
def internal_channel(all_server):
    """The `all` server's private socket, where its internal services (teacher, surrogate, gate, jobs) answer."""
    with grpc.insecure_channel(all_server.internal_address) as ch:
        yield ch
