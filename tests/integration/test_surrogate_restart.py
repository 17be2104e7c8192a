"""The surrogate service restarted between turns of a switched session: `soma serve --target all`
(real CPU models, live adaptation with the `tiny` budget as in test_live_session) whose surrogate
turns go to a separate `soma serve --target surrogate` process. While it is down the teacher serves
the turn (no error for the client); once it is back, on the same address, the surrogate serves
again, with the session's adapter loaded anew from the adapter store."""

from __future__ import annotations

import pytest

from soma.client import open_channel
from soma.launcher import start_server
from soma.v1 import dialogue_pb2_grpc
from tests.integration.test_live_session import LIVE_ENV, ON_TOPIC, open_session, served
from tests.servers import free_port

pytestmark = pytest.mark.integration


def test_a_surrogate_restarted_between_turns_serves_again_and_no_turn_is_lost(tmp_path):
    port = free_port()
    env = {
        **LIVE_ENV,
        "SOMA_DIALOGUE__SESSION_DB": str(tmp_path / "sessions.db"),
        "SOMA_ADAPTERS__LOCAL_DIR": str(tmp_path / "adapters"),
        "SOMA_JOBS__LOCAL_DIR": str(tmp_path / "jobs"),
    }
    surrogate = start_server("surrogate", ["--port", str(port)], env=env, log_path=tmp_path / "surrogate.log")
    env["SOMA_ADAPTATION__SURROGATE_ADDRESS"] = f"127.0.0.1:{port}"
    try:
        with start_server("all", env=env, log_path=tmp_path / "all.log") as server:
            stub = dialogue_pb2_grpc.DialogueServiceStub(open_channel(server.address, server.api_key))
            s = open_session(stub, "restart-g-1")
            s.turn(ON_TOPIC[0])
            s.turn(ON_TOPIC[1])
            s.wait_phase("SESSION_PHASE_SURROGATE")
            assert served(s.turn(ON_TOPIC[2])) == "SERVED_BY_SURROGATE"

            surrogate.stop()  # between turns
            down = s.turn(ON_TOPIC[3])
            assert served(down) == "SERVED_BY_TEACHER" and "UNAVAILABLE" in down.route_reason, down.route_reason

            surrogate = start_server("surrogate", ["--port", str(port)], env=env, log_path=tmp_path / "surrogate.log")
            back = s.turn(ON_TOPIC[0] + " Again, briefly.")
            assert served(back) == "SERVED_BY_SURROGATE", back.route_reason
            state = s.state()
            assert (state.turn_count, state.surrogate_turns) == (5, 2)
    finally:
        surrogate.stop()
