"""POST /prompt with ``partial_execution_targets`` (ComfyUI's field): only the chosen
output nodes and what they need run, lazy branches included; GET /history pages."""

from __future__ import annotations

from typing import Any

from tests.server.helpers import Http, wait_history

REGISTRY = "tests.test_engine2:make_registry"


def prompt() -> dict[str, Any]:
    return {
        "1": {"class_type": "TestSource", "inputs": {"value": 5}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "TestFail", "inputs": {"x": ["1", 0]}},  # fails if it runs
        "4": {"class_type": "If", "inputs": {"condition": True, "if_true": ["2", 0],
                                             "if_false": ["3", 0]}},
        "5": {"class_type": "TestOut", "inputs": {"value": ["4", 0]}},
        "6": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}},
        "7": {"class_type": "TestOut", "inputs": {"value": ["3", 0]}},  # would fail
    }


def test_partial_execution_targets_with_and_without_lazy_nodes(make_server, loop):
    server = make_server(registry_factory=REGISTRY)
    http = Http(server.url, loop)
    try:
        whole = http.post("/prompt", json={"prompt": prompt()}).json()["prompt_id"]
        only_6 = http.post("/prompt", json={"prompt": prompt(),
                                            "partial_execution_targets": ["6"]}).json()
        lazy = http.post("/prompt", json={"prompt": prompt(),
                                          "partial_execution_targets": ["5"]}).json()
        history = wait_history(http, [whole, only_6["prompt_id"], lazy["prompt_id"]])
        assert history[whole]["status"]["status_str"] == "error"  # node 7 ran node 3
        assert history[only_6["prompt_id"]]["outputs"] == {"6": {"value": [5]}}
        assert history[lazy["prompt_id"]]["outputs"] == {"5": {"value": [6]}}
        assert history[lazy["prompt_id"]]["status"]["status_str"] == "success"
        bad = http.post("/prompt", json={"prompt": prompt(), "partial_execution_targets": ["99"]})
        assert bad.status == 400
        # history paging, ComfyUI's: oldest first; offset counts from the oldest
        ids = [whole, only_6["prompt_id"], lazy["prompt_id"]]
        assert list(http.get("/history", params={"max_items": 1}).json()) == ids[-1:]
        assert list(http.get("/history", params={"max_items": 1, "offset": 1}).json()) \
            == ids[1:2]
    finally:
        http.close()
