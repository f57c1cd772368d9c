"""The canvas's queue: Queue N times (batch count), queue on change, per-item progress."""

from __future__ import annotations

import re
import time

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import LiveServer
from tests.e2e.test_canvas import TXT2IMG, small_txt2img


def _history_ids(server: LiveServer) -> set[str]:
    return set(server.get("/history?max_items=200"))


def _wait_new_history(server: LiveServer, before: set[str], n: int, timeout: float = 240
                      ) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = server.get("/history?max_items=200")
        new = {k: v for k, v in history.items() if k not in before}
        done = {k: v for k, v in new.items()
                if (v.get("status") or {}).get("completed") is not None}
        if len(done) >= n:
            return done
        time.sleep(0.5)
    raise TimeoutError(f"{n} new history entries did not come in {timeout}s")


def _seed(entry: dict) -> int:
    prompt = entry["prompt"][2]
    return prompt["3"]["inputs"]["seed"]


def test_queue_three_times_makes_three_prompts_with_different_seeds(page, server: LiveServer):
    c = Canvas(page)
    c.open_file("batch.json", small_txt2img(steps=2))
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    c.node("3").get_by_label("seed control after generate").select_option("increment")
    c.set_value("3", "seed", "100")
    before = _history_ids(server)
    page.get_by_label("queue count").fill("3")
    page.get_by_role("button", name="Queue", exact=True).click()
    expect(c.toasts().filter(has_text="Queued 3 prompts")).to_have_count(1)
    done = _wait_new_history(server, before, 3)
    assert sorted(_seed(e) for e in done.values()) == [100, 101, 102]
    assert all(e["status"]["status_str"] == "success" for e in done.values())
    # the canvas shows the seed the next Queue uses
    expect(c.widget("3", "seed")).to_have_value("103")
    page.wait_for_timeout(1500)
    assert len(_history_ids(server) - before) == 3  # exactly three


def test_ctrl_enter_pressed_fast_gives_each_prompt_its_own_seed(page, server: LiveServer):
    """Presses made while an earlier prompt is still posting wait for it: none is lost, and
    each prompt gets its own seed (a press used to read the seed before the earlier one had
    moved it on, so prompts went out with the same seed)."""
    c = Canvas(page)
    c.open_file("rapid.json", small_txt2img(steps=5000))  # the first runs on, the rest wait
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    c.node("3").get_by_label("seed control after generate").select_option("increment")
    c.set_value("3", "seed", "100")
    posted: list[int] = []
    page.on("request", lambda r: posted.append(r.post_data_json["prompt"]["3"]["inputs"]["seed"])
            if r.method == "POST" and r.url.split("?")[0].endswith("/prompt") else None)
    page.locator(".react-flow__pane").click(position={"x": 20, "y": 20})
    try:
        for _ in range(15):
            page.keyboard.press("Control+Enter")
        page.keyboard.press("Control+Shift+Enter")  # at the front: its own seed too
        expect(c.widget("3", "seed")).to_have_value("116", timeout=60_000)
        deadline = time.monotonic() + 30
        while len(posted) < 16 and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert posted == list(range(100, 116)), posted
        page.wait_for_timeout(800)
        assert len(posted) == 16  # nothing queued twice
        expect(page.get_by_role("button", name="Queue", exact=True)).to_be_enabled()
    finally:
        server.stop_all()


def test_seed_typed_while_a_batch_posts_is_used_from_the_next_prompt(page, server: LiveServer):
    """Batch 5 on increment from 100; the user types 500 while the 2nd prompt is still being
    posted (a slow link: the page's POSTs are held by a route). As ComfyUI reads the graph
    for each prompt, the typed seed goes out from the 3rd prompt on, and the moved-on seeds of
    the prompts read before the edit never overwrite it (it used to post 100..104, end at 105)."""
    c = Canvas(page)
    c.open_file("typed.json", small_txt2img(steps=5000))  # the first runs on, the rest wait
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    c.node("3").get_by_label("seed control after generate").select_option("increment")
    c.set_value("3", "seed", "100")
    c.set_value("6", "text", "a red circle")
    held: list = []
    posted: list[dict] = []

    def hold(route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        posted.append(route.request.post_data_json["prompt"])
        held.append(route)

    def wait_posts(n: int) -> None:
        deadline = time.monotonic() + 30
        while len(posted) < n and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert len(posted) >= n, posted

    page.route("**/prompt", hold)
    try:
        page.get_by_label("queue count").fill("5")
        page.get_by_role("button", name="Queue", exact=True).click()
        wait_posts(1)
        held.pop(0).continue_()
        wait_posts(2)  # the 2nd POST is on its way: the user types meanwhile
        c.set_value("3", "seed", "500")
        c.set_value("6", "text", "a blue square")
        held.pop(0).continue_()
        expect(c.widget("3", "seed")).to_have_value("500")  # not overwritten with 102
        for k in range(3, 6):
            wait_posts(k)
            held.pop(0).continue_()
        expect(c.toasts().filter(has_text="Queued 5 prompts")).to_have_count(1)
        assert [p["3"]["inputs"]["seed"] for p in posted] == [100, 101, 500, 501, 502]
        texts = [p["6"]["inputs"]["text"] for p in posted]
        assert texts == ["a red circle"] * 2 + ["a blue square"] * 3
        expect(c.widget("3", "seed")).to_have_value("503")
        page.wait_for_timeout(800)
        assert len(posted) == 5
    finally:
        for route in held:
            route.continue_()
        page.unroute("**/prompt")
        server.stop_all()


def test_queue_on_change_queues_once_after_a_widget_edit(page, server: LiveServer):
    c = Canvas(page)
    c.open_file("onchange.json", small_txt2img(steps=2))
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    c.node("3").get_by_label("seed control after generate").select_option("randomize")
    before = _history_ids(server)
    # the canvas's POSTs, seen as they go (a prompt queued by mistake may not have run, or
    # even reached the queue, by the time the test looks at the server)
    posted: list[dict] = []
    page.on("request", lambda r: posted.append(r.post_data_json["prompt"])
            if r.method == "POST" and r.url.split("?")[0].endswith("/prompt") else None)
    page.get_by_label("queue on change").check()
    page.wait_for_timeout(1500)
    assert posted == [] and _history_ids(server) == before  # turning it on queues nothing
    c.set_value("6", "text", "a blue square on a white background")
    done = _wait_new_history(server, before, 1, timeout=120)
    [entry] = done.values()
    assert entry["prompt"][2]["6"]["inputs"]["text"] == "a blue square on a white background"
    # the seed it moved on afterwards (randomize) is not a change: nothing more is queued
    page.wait_for_timeout(3000)
    assert len(posted) == 1, posted
    assert len(_history_ids(server) - before) == 1
    assert server.get("/queue")["queue_pending"] == []
    # another edit queues again
    c.set_value("3", "steps", "3")
    done = _wait_new_history(server, before, 2, timeout=120)
    assert sorted(e["prompt"][2]["3"]["inputs"]["steps"] for e in done.values()) == [2, 3]
    page.get_by_label("queue on change").uncheck()


def test_queue_item_shows_node_step_and_elapsed_time(page, server: LiveServer):
    c = Canvas(page)
    c.open_file("long.json", small_txt2img(steps=5000))
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    try:
        c.queue()
        running = page.get_by_role("list", name="queue").locator(".sf-queue-item.running")
        progress = running.get_by_test_id("queue-progress")
        expect(progress).to_contain_text(re.compile(r"step \d+/5000"), timeout=120_000)
        expect(progress).to_contain_text(re.compile(r"KSampler #3|Sample #3|#3"))
        expect(progress).to_contain_text(re.compile(r"node \d+/\d+"))
        expect(running.get_by_role("progressbar")).to_be_visible()
        elapsed = running.get_by_test_id("elapsed")
        shown = elapsed.inner_text()
        first = float(shown.split()[0])
        expect(elapsed).not_to_have_text(shown)  # the clock runs...
        assert float(elapsed.inner_text().split()[0]) > first  # ... forward
        shown = progress.inner_text()
        step = int(re.search(r"step (\d+)/", shown).group(1))  # type: ignore[union-attr]
        expect(progress).not_to_contain_text(f"step {step}/")
        later = int(re.search(r"step (\d+)/", progress.inner_text()).group(1))  # type: ignore[union-attr]
        assert later > step
    finally:
        server.stop_all()


def test_status_bar_shows_another_clients_run(page, server: LiveServer):
    """Run events go only to the client that queued; the status bar still says the shared
    queue is busy with someone else's prompt, and stops saying so when it ends."""
    c = Canvas(page)
    c.open_file("mine.json", small_txt2img(steps=2))
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    status = page.get_by_test_id("status")
    expect(status).to_contain_text("connected")
    theirs = server.post("/prompt", {"prompt": small_txt2img(steps=5000)["prompt"],
                                     "client_id": "someone-else"})
    try:
        expect(status).to_contain_text("running another client's prompt", timeout=60_000)
        expect(status).not_to_contain_text("running Sample")  # no node of ours is named
        queue = page.get_by_role("list", name="queue")
        running = queue.locator(".sf-queue-item.running")
        expect(running.get_by_test_id("other-client")).to_be_visible()
        # Two clients waiting on a server without --fair-queue: prompts run in number
        # order (ComfyUI's), so the tab says nothing about turns.
        turns = page.get_by_test_id("queue-turns")
        for client in ("someone-else", "a-third-one"):
            server.post("/prompt", {"prompt": small_txt2img(steps=2)["prompt"],
                                    "client_id": client})
        expect(queue.locator(".sf-queue-item").get_by_test_id("other-client")).to_have_count(3)
        expect(turns).to_have_count(0)
    finally:
        server.post("/queue", {"clear": True})
        server.post("/interrupt", {"prompt_id": theirs["prompt_id"]})
    server.wait_history(theirs["prompt_id"])
    expect(status).not_to_contain_text("another client", timeout=15_000)
    expect(status).to_contain_text("queue 0")


def test_queue_three_times_with_every_seed_fixed_says_they_make_one_image(page, server: LiveServer):
    """Queue ×4 on the txt2img example (its seed fixed) made four equal prompts, three of them
    answered by the cache with the same image, and nothing said so (a newcomer's walk)."""
    c = Canvas(page)
    doc = small_txt2img(steps=2)
    doc["prompt"]["6"]["inputs"]["text"] = "fixed batch e2e: a pink star"
    c.open_file("fixed.json", doc)
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    expect(c.node("3").get_by_label("seed control after generate")).to_have_value("fixed")
    before = _history_ids(server)
    page.get_by_label("queue count").fill("3")
    page.get_by_role("button", name="Queue", exact=True).click()
    same = re.compile(r"Queued 3 prompts.*all the same.*increment or randomize")
    expect(c.toasts().filter(has_text=same)).to_have_count(1)
    _wait_new_history(server, before, 3)


def test_interrupt_with_nothing_running_says_so(page):
    page.locator(".sf-toolbar").get_by_role("button", name="Interrupt").click()
    said = Canvas(page).toasts().filter(has_text="Nothing is running to interrupt")
    expect(said).to_have_count(1)
