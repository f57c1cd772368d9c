"""A long-running server stays bounded: cache entries and history."""

from __future__ import annotations

from tests.server.helpers import Http, LiveServer, chain, wait_history


def test_cache_and_history_stay_bounded(make_server, loop):
    server: LiveServer = make_server(max_history=30)
    http = Http(server.url, loop)
    first = http.post("/prompt", json={"prompt": chain()}).json()["prompt_id"]
    wait_history(http, [first])
    session = server.state.runtime.session
    session.executor.cache.max_entries = 50
    server.state.runtime.config.max_history = 30
    ids = [http.post("/prompt", json={"prompt": chain(i % 100, i)}).json()["prompt_id"]
           for i in range(120)]
    wait_history(http, ids[-1:])
    assert len(session.executor.cache) <= 50
    # The worker prunes every 100 prompts (121 finished: pruned to 30 at the 100th).
    assert len(http.get("/history").json()) <= 30 + 21
    server.state.storage.prune_history(30)
    assert list(http.get("/history").json()) == ids[-30:]
    http.close()
