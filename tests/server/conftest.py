"""Fixtures: a live in-process server on a free loopback port, and clients for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.server.helpers import Http, InProcessServer, LiveServer, Loop, start_server, wait_quiet


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture
def make_server(tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Callable[..., LiveServer]]:
    """Start servers with ServerConfig overrides; all are stopped at teardown."""
    started: list[InProcessServer] = []

    def make(setup_app: Any = None, **overrides: Any) -> LiveServer:
        base = overrides.pop("base_dir", None) or tmp_path_factory.mktemp("server")
        srv = start_server(base, setup_app=setup_app, **overrides)
        started.append(srv)
        return srv.live

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for a module that sets ``SHARED_SERVER = True``: each start costs seconds."""
    srv = start_server(tmp_path_factory.mktemp("shared"))
    yield srv.live
    srv.stop()


@pytest.fixture
def server(request: pytest.FixtureRequest, make_server: Callable[..., LiveServer]) -> LiveServer:
    """A fresh server, or the module's shared one (``SHARED_SERVER``) once it is quiet;
    a test that needs settings of its own calls ``make_server``."""
    if getattr(request.module, "SHARED_SERVER", False):
        live = request.getfixturevalue("shared_server")
        wait_quiet(live)
        return live
    return make_server()


@pytest.fixture
def http(server: LiveServer, loop: Loop) -> Iterator[Http]:
    client = Http(server.url, loop)
    yield client
    client.close()


@pytest.fixture
def quick_start_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker starts retried 50 ms apart: for tests that show the retries, not their pacing."""
    import server.pool as pool_module

    monkeypatch.setattr(pool_module, "START_RETRY_BACKOFF",
                        (0.05,) * len(pool_module.START_RETRY_BACKOFF))
