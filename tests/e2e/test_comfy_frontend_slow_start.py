"""ComfyUI's app with a node pack like rgthree-comfy (the drill's): a first visit still
gets Steerflow's txt2img graph.

The app awaits every extension's ``setup()`` and only then opens its first graph. Our
default-graph extension loaded its graph inside its own setup, before the app had opened
anything; with rgthree-comfy, whose wrapper of ``app.loadApiJson`` does not await the
load, the app's own start-up then opened its default graph (nodes this server lacks) over
ours. Now the offer waits for the app's start-up to end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import LiveServer, chromium_page
from tests.e2e.test_comfy_frontend import comfy_frontend_server

pytestmark = pytest.mark.slow

# as rgthree-comfy's: app.loadApiJson wrapped without awaiting the load, and a setup that
# takes a few seconds
PACK_JS = """import { app } from "../../scripts/app.js";
app.registerExtension({
  name: "test.slowPack",
  init() {
    const loadApiJson = app.loadApiJson;
    app.loadApiJson = async function (...args) { loadApiJson.apply(app, args); };
  },
  async setup() { await new Promise((resolve) => setTimeout(resolve, 3000)); },
});
"""


@pytest.fixture(scope="module")
def comfy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("steerflow-comfy-slow-start")
    pack = base / "custom_nodes" / "slow_pack"
    (pack / "js").mkdir(parents=True)
    (pack / "__init__.py").write_text(
        'NODE_CLASS_MAPPINGS = {}\nWEB_DIRECTORY = "./js"\n'
        '__all__ = ["NODE_CLASS_MAPPINGS", "WEB_DIRECTORY"]\n')
    (pack / "js" / "slow_pack.js").write_text(PACK_JS)
    with comfy_frontend_server(base, extra=("--custom-nodes", str(base / "custom_nodes"))
                               ) as live:
        live.post("/api/settings", {"Comfy.TutorialCompleted": True})
        yield live


def test_a_first_visit_gets_the_txt2img_graph_after_a_slow_start(comfy_server: LiveServer):
    with chromium_page() as page:
        page.goto(comfy_server.url + "/")
        page.wait_for_function("""() => window.app?.graph?._nodes?.some(
            n => n.type === 'CheckpointLoaderSimple')""", timeout=120_000)
        page.wait_for_timeout(3000)  # and it stays: nothing the app opens later replaces it
        types = page.evaluate("() => window.app.graph._nodes.map(n => n.type)")
        assert "CheckpointLoaderSimple" in types and "UNETLoader" not in types, types
        offered = page.evaluate("() => localStorage.getItem('steerflow.defaultGraphOffered')")
        assert offered == "1"
