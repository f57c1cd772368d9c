"""Fixtures: a live in-process server on a free loopback port, and clients for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from server.config import ServerConfig
from tests.server.helpers import TEST_REGISTRY, Http, InProcessServer, LiveServer, Loop


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
        overrides.setdefault("workflows_dir", base / "workflows")
        overrides.setdefault("web_dir", base / "web-dist")
        overrides.setdefault("registry_factory", TEST_REGISTRY)  # None: the real packs
        config = ServerConfig(host="127.0.0.1", port=0, base_dir=base, device="cpu",
                              **overrides)
        srv = InProcessServer(config, setup_app)
        started.append(srv)
        return srv.live

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server()


@pytest.fixture
def http(server: LiveServer, loop: Loop) -> Iterator[Http]:
    client = Http(server.url, loop)
    yield client
    client.close()
