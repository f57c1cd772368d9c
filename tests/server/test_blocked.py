"""An ExecutionBlocker with a message over the real server: an ``execution_error`` of
type ``ExecutionBlocked`` reaches the client as it happens and ends nothing; the
prompt succeeds and its history records no error (ComfyUI's behaviour)."""

from __future__ import annotations

from tests.server.helpers import Http, recv_until, wait_history

REGISTRY = "tests.test_engine2:make_registry"


def test_a_blocked_element_is_reported_and_the_prompt_succeeds(make_server, loop):
    server = make_server(registry_factory=REGISTRY)
    http = Http(server.url, loop)
    ws = server.connect_ws("blocked-client")
    try:
        prompt = {
            "1": {"class_type": "TestIntList", "inputs": {"start": 0, "count": 3}},
            "2": {"class_type": "TestBlockOdd", "inputs": {"x": ["1", 0], "message": "odd"}},
            "3": {"class_type": "TestAdd", "inputs": {"a": ["2", 0], "b": 100}},
            "4": {"class_type": "TestOut", "inputs": {"value": ["3", 0]}},
        }
        prompt_id = http.post("/prompt", json={"prompt": prompt,
                                               "client_id": "blocked-client"}).json()["prompt_id"]
        events, _ = recv_until(ws, prompt_id)
        types = [e["type"] for e in events]
        blocked = [e["data"] for e in events if e["type"] == "execution_error"]
        assert len(blocked) == 1 and blocked[0]["exception_type"] == "ExecutionBlocked"
        assert blocked[0]["node_id"] == "3"
        assert blocked[0]["exception_message"] == "Execution Blocked: odd"
        assert types.index("execution_error") < types.index("execution_success")
        entry = wait_history(http, [prompt_id])[prompt_id]
        assert entry["status"]["status_str"] == "success"
        assert entry["outputs"] == {"4": {"value": [100, 102]}}
        assert "execution_error" not in [m[0] for m in entry["status"]["messages"]]
    finally:
        ws.close()
        http.close()
