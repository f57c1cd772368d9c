"""A long-running server stays bounded: cache entries and history."""

from __future__ import annotations

from tests.server.helpers import Http, LiveServer, chain, wait_history


def test_cache_and_history_stay_bounded(make_server, loop):
    server: LiveServer = make_server(max_history=30, cache_max_entries=50)
    http = Http(server.url, loop)
    ids = [http.post("/prompt", json={"prompt": chain(i % 100, i)}).json()["prompt_id"]
           for i in range(120)]
    wait_history(http, ids[-1:])
    # The worker process reports its cache size with every finished prompt.
    assert 0 < server.state.runtime.worker_info["cache_entries"] <= 50
    # The runtime prunes every 100 prompts (120 finished: pruned to 30 at the 100th).
    assert len(http.get("/history").json()) <= 30 + 20
    server.state.storage.prune_history(30)
    assert list(http.get("/history").json()) == ids[-30:]
    http.close()
