"""Defects a second ComfyUI protocol drill and a drill of ComfyUI's own web app found,
each checked against what ComfyUI's server does."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.server.helpers import Http, LiveServer, image, slow, wait_history


def test_jobs_cancel_a_pending_job_and_interrupt_a_running_one(server: LiveServer,
                                                               http: Http):
    """ComfyUI's job queue panel cancels through ``POST /jobs/{id}/cancel`` only."""
    running = http.post("/prompt", json={"prompt": slow(100000)}).json()["prompt_id"]
    pending = http.post("/prompt", json={"prompt": image(value=3)}).json()["prompt_id"]
    reply = http.post(f"/api/jobs/{pending}/cancel")
    assert reply.status == 200 and reply.json() == {"job_id": pending, "result": "cancelled"}
    assert http.get(f"/jobs/{pending}").status == 404  # gone, as /queue delete leaves it
    deadline = time.monotonic() + 60  # it must be running before it can be interrupted
    while http.get(f"/jobs/{running}").json()["status"] != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert http.post(f"/jobs/{running}/cancel").json()["result"] == "interrupted"
    wait_history(http, [running])
    assert http.get(f"/jobs/{running}").json()["status"] == "cancelled"
    # finished or unknown: nothing to do, still 200
    assert http.post(f"/jobs/{running}/cancel").json()["result"] == "unchanged"
    assert http.post("/jobs/no-such-job/cancel").json()["result"] == "unchanged"


def test_jobs_cancel_batch_refuses_unknown_ids_and_cancels_nothing(server: LiveServer,
                                                                   http: Http):
    blocker = http.post("/prompt", json={"prompt": slow(100000)}).json()["prompt_id"]
    a = http.post("/prompt", json={"prompt": image(value=4)}).json()["prompt_id"]
    b = http.post("/prompt", json={"prompt": image(value=5)}).json()["prompt_id"]
    reply = http.post("/jobs/cancel", json={"job_ids": [a, "nope"]})
    assert reply.status == 404 and reply.json()["error"]["extra_info"]["unknown"] == ["nope"]
    assert http.get(f"/jobs/{a}").json()["status"] == "pending"
    reply = http.post("/jobs/cancel", json={"job_ids": [a, b]})
    assert reply.status == 200
    assert reply.json() == {"results": {a: "cancelled", b: "cancelled"}}
    assert http.post("/jobs/cancel", json={"job_ids": "x"}).status == 400
    # pending or running by now: cancel takes it out of the queue (no history entry) or
    # interrupts it (an /interrupt before it runs would let it run its 100000 steps)
    if http.post(f"/jobs/{blocker}/cancel").json()["result"] == "interrupted":
        wait_history(http, [blocker])


def test_a_userdata_name_with_a_colon_is_saved_and_refusals_carry_their_reason(
        server: LiveServer, http: Http):
    """ComfyUI on Linux saves "Portrait: v2.json"; its front end shows a failed
    request's status text, so a refusal says why there, not only in the body."""
    name = "workflows%2FPortrait%3A%20v2.json"
    assert http.post(f"/api/userdata/{name}", data=b"{}").status == 200
    assert http.get(f"/api/userdata/{name}").body == b"{}"
    request = urllib.request.Request(f"{server.url}/api/userdata/a%5Cb.json", data=b"{}",
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400
    assert "invalid file name" in info.value.reason and "\\" in info.value.reason
    assert json.loads(info.value.read())["error"]["type"] == "invalid_path"


def test_system_stats_has_the_template_and_front_end_versions(http: Http):
    system = http.get("/system_stats").json()["system"]
    for key in ("required_frontend_version", "installed_templates_version",
                "required_templates_version"):
        assert isinstance(system[key], str), key


def test_a_node_without_class_type_is_an_invalid_prompt(http: Http):
    reply = http.post("/prompt", json={"prompt": {"9": {"inputs": {}}, **image()}})
    assert reply.status == 400
    body = reply.json()
    assert body["error"]["type"] == "invalid_prompt"
    assert body["error"]["message"] == ("Cannot execute because a node is missing the "
                                        "class_type property.")
    assert body["node_errors"] == {}


def test_partial_execution_targets_count_output_nodes_only(http: Http):
    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 2}},
              "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    reply = http.post("/prompt", json={"prompt": prompt, "partial_execution_targets": ["1"]})
    assert reply.status == 400 and reply.json()["error"]["type"] == "prompt_no_outputs"
    reply = http.post("/prompt", json={"prompt": prompt,
                                       "partial_execution_targets": ["1", "2"]})
    assert reply.status == 200
    assert any("not an output node" in w["message"] for w in reply.json()["warnings"])
    pid = reply.json()["prompt_id"]
    assert list(wait_history(http, [pid])[pid]["outputs"]) == ["2"]
