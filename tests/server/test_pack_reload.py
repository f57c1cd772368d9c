"""A pack edited while the server runs: a restarted worker imports the new files, and the
server's node list follows, so validation and /object_info match what runs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.server.helpers import Http, wait_history

pytestmark = pytest.mark.slow  # a server and two workers with the real packs

PACK = '''
from engine import Input, Node, NodeResult, Output

class ProbeVer(Node):
    TYPE = "ProbeVer"
    DISPLAY_NAME = "Probe {version}"
    OUTPUT_NODE = True
    OUTPUTS = (Output("STRING"),)
    x: int = Input(1)
{extra}
    def execute(self, ctx):
        text = "code {version} y=" + str(getattr(self, "y", None))
        return NodeResult((text,), {{"text": [text]}})

NODE_CLASSES = (ProbeVer,)
'''


def write_pack(folder: Path, version: str, extra: str = "") -> None:
    path = folder / "probe_pack.py"
    path.write_text(PACK.format(version=version, extra=extra))
    stamp = time.time() + (10 if version == "v2" else 0)  # a later mtime, whatever the clock
    os.utime(path, (stamp, stamp))


def test_a_worker_restarted_after_an_edit_and_the_node_list_agree(make_server, loop,
                                                                  tmp_path: Path):
    packs = tmp_path / "custom_nodes"
    packs.mkdir()
    write_pack(packs, "v1")
    server = make_server(registry_factory=None, custom_nodes=packs)
    http = Http(server.url, loop)
    try:
        info = http.get("/object_info/ProbeVer").json()["ProbeVer"]
        assert list(info["input"]["required"]) == ["x"]
        first = wait_history(http, [http.post("/prompt", json={"prompt": {
            "1": {"class_type": "ProbeVer", "inputs": {"x": 1}}}}).json()["prompt_id"]])
        assert next(iter(first.values()))["outputs"]["1"]["text"] == ["code v1 y=None"]

        write_pack(packs, "v2", "    y: int = Input(5)\n")
        worker = server.state.runtime.worker_info["pid"]
        os.kill(worker, signal.SIGKILL)  # as a hard interrupt or a crash restarts it
        deadline = time.monotonic() + 180
        while True:
            info = http.get("/object_info/ProbeVer").json()["ProbeVer"]
            if "y" in info["input"]["required"]:
                break
            assert time.monotonic() < deadline, "the node list never followed the worker"
            time.sleep(0.5)
        assert info["display_name"] == "Probe v2"
        pid = http.post("/prompt", json={"prompt": {
            "1": {"class_type": "ProbeVer", "inputs": {"x": 1, "y": 7}}}}).json()["prompt_id"]
        entry = wait_history(http, [pid], timeout=120)[pid]
        assert entry["outputs"]["1"]["text"] == ["code v2 y=7"]
    finally:
        http.close()
