"""A page object for the canvas: what a person does, expressed as mouse and keyboard."""

from __future__ import annotations

import base64
import json
from typing import Any

from playwright.sync_api import Locator, Page, expect

#: the ids of the nodes not wholly inside the canvas pane (under the side panel, past an edge)
NOT_WHOLLY_IN_VIEW = """() => {
    const p = document.querySelector('.react-flow').getBoundingClientRect();
    return [...document.querySelectorAll('.react-flow__node')].filter(e => {
        const r = e.getBoundingClientRect();
        return r.left < p.left - 1 || r.top < p.top - 1 || r.right > p.right + 1
            || r.bottom > p.bottom + 1;
    }).map(e => e.dataset.id);
}"""


class Canvas:
    def __init__(self, page: Page):
        self.page = page

    # --- finding things ---------------------------------------------------------------
    def node(self, node_id: str) -> Locator:
        return self.page.locator(f'.react-flow__node[data-id="{node_id}"]')

    def nodes(self) -> Locator:
        return self.page.locator(".react-flow__node")

    def edges(self) -> Locator:
        return self.page.locator(".react-flow__edge")

    def out_handle(self, node_id: str, slot: int) -> Locator:
        return self.node(node_id).locator(f'.react-flow__handle[data-handleid="o{slot}"]')

    def in_handle(self, node_id: str, name: str) -> Locator:
        return self.node(node_id).locator(f'.react-flow__handle[data-handleid="i:{name}"]')

    def widget(self, node_id: str, name: str) -> Locator:
        row = self.node(node_id).locator(f'.sf-input[data-input="{name}"]')
        return row.get_by_label(name, exact=True)

    def toasts(self) -> Locator:
        return self.page.get_by_test_id("toast")

    def pane_box(self) -> dict[str, float]:
        box = self.page.locator(".react-flow__pane").bounding_box()
        assert box is not None
        return box

    def node_ids(self) -> list[str]:
        return self.nodes().evaluate_all("els => els.map(e => e.dataset.id)")

    def wait_saved(self, n_nodes: int, name: str | None = None) -> None:
        """Wait until the autosave (written with each undo step) holds ``n_nodes`` nodes, and
        is the document named ``name`` if given (as opened from ``name.json``: the autosave
        of the graph before may have as many nodes, e.g. the default graph, whose save the
        fixture's Clear may not have replaced yet)."""
        self.page.wait_for_function(
            """([n, name]) => {
                      const d = JSON.parse(localStorage.getItem('steerflow.autosave') || '{}');
                      return d.prompt && Object.keys(d.prompt).length === n
                          && (name === null || d.extra?.name === name); }""",
            arg=[n_nodes, name])

    def wait_saved_inputs(self, node_id: str, **values: Any) -> None:
        """Wait until the autosave holds these input values on ``node_id`` (it is written 200 ms
        after an edit settles, so a count of nodes alone can be met by the save before it)."""
        self.page.wait_for_function(
            """([id, want]) => {
                      const d = JSON.parse(localStorage.getItem('steerflow.autosave') || '{}');
                      const got = d.prompt?.[id]?.inputs ?? {};
                      return Object.entries(want).every(([k, v]) => got[k] === v); }""",
            arg=[node_id, values])

    def wait_saved_control(self, node_id: str, **controls: str) -> None:
        """Wait until the autosave holds these "control after generate" choices on
        ``node_id`` (e.g. ``seed="fixed"``)."""
        self.page.wait_for_function(
            """([id, want]) => {
                      const d = JSON.parse(localStorage.getItem('steerflow.autosave') || '{}');
                      const got = d.layout?.nodes?.[id]?.control ?? {};
                      return Object.entries(want).every(([k, v]) => got[k] === v); }""",
            arg=[node_id, controls])

    def document(self) -> dict[str, Any]:
        return self.page.evaluate("() => window.steerflow.getDocument()")

    # --- doing things -------------------------------------------------------------------
    def add_node(self, search: str, x: float, y: float) -> str:
        """Double-click the canvas at (x, y) (relative to the pane), search, press Enter."""
        before = set(self.node_ids())
        box = self.pane_box()
        self.page.mouse.dblclick(box["x"] + x, box["y"] + y)
        dialog = self.page.get_by_role("dialog", name="Add node")
        expect(dialog).to_be_visible()
        dialog.get_by_label("Search nodes").fill(search)
        self.page.keyboard.press("Enter")
        expect(dialog).to_be_hidden()
        expect(self.nodes()).to_have_count(len(before) + 1)
        (new,) = set(self.node_ids()) - before
        return new

    def drag(self, start: Locator, end: Locator) -> None:
        a = self.settled_box(start)
        b = self.settled_box(end)
        self.page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
        self.page.mouse.down()
        self.page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, steps=12)
        self.page.mouse.up()

    def settled_box(self, locator: Locator) -> dict[str, float]:
        """The element's box once it stops moving (React Flow measures nodes and lays
        out handles over a few frames after a document opens)."""
        box = None
        for _ in range(40):
            now = locator.bounding_box()
            if now is not None and now == box:
                return now
            box = now
            self.page.wait_for_timeout(50)
        assert box is not None, "element has no box"
        return box

    def overlapping(self, node_id: str) -> list[str]:
        """The nodes whose boxes overlap node ``node_id``'s (once it has settled)."""
        box = self.settled_box(self.node(node_id))
        out = []
        for other in self.node_ids():
            o = self.node(other).bounding_box()
            if other == node_id or o is None:
                continue
            if (box["x"] < o["x"] + o["width"] and o["x"] < box["x"] + box["width"]
                    and box["y"] < o["y"] + o["height"] and o["y"] < box["y"] + box["height"]):
                out.append(other)
        return out

    def connect(self, src: str, slot: int, dst: str, name: str) -> None:
        self.drag(self.out_handle(src, slot), self.in_handle(dst, name))

    def int_shown(self, value: str, int_x: float = 60, show_x: float = 420,
                  y: float = 60) -> tuple[str, str]:
        """An Int node set to ``value`` linked into a Show Value node: their ids."""
        num = self.add_node("Int", int_x, y)
        show = self.add_node("Show Value", show_x, y)
        self.connect(num, 0, show, "value")
        self.set_value(num, "value", value)
        expect(self.edges()).to_have_count(1)
        return num, show

    def set_value(self, node_id: str, name: str, value: str) -> None:
        field = self.widget(node_id, name)
        field.fill(value)
        field.blur()

    def queue(self) -> None:
        self.page.keyboard.press("Control+Enter")

    def queue_id(self) -> str:
        """Queue (Ctrl+Enter) and return the id the server gave the prompt, from its answer to
        the canvas's POST (/queue, read afterwards, may not show it: it may have ended)."""
        with self.page.expect_response(lambda r: r.request.method == "POST"
                                       and r.url.split("?")[0].endswith("/prompt")) as answer:
            self.queue()
        return answer.value.json()["prompt_id"]

    def clear(self) -> None:
        """The toolbar's Clear, confirmed in the question it asks when the graph has nodes."""
        had = self.nodes().count()
        self.page.locator(".sf-toolbar").get_by_role("button", name="Clear", exact=True).click()
        if had:
            self.confirm_clear()
        expect(self.nodes()).to_have_count(0)

    def confirm_clear(self) -> None:
        dialog = self.page.get_by_role("alertdialog", name="Clear the workflow?")
        dialog.get_by_role("button", name="Clear", exact=True).click()
        expect(dialog).to_be_hidden()

    def open_example(self, name: str) -> None:
        """Open an example workflow (``txt2img.json``) through the toolbar's examples browser
        (it stays open until the example is on the canvas)."""
        self.page.get_by_role("button", name="Examples", exact=True).click()
        browser = self.page.get_by_role("dialog", name="Examples")
        browser.locator(f'.sf-example-card[data-example="{name}"] .sf-example-open').click()
        expect(browser).to_be_hidden()

    def drop_file(self, name: str, data: bytes, mime: str) -> None:
        """Drop a file on the canvas as a person dragging it from their desktop would."""
        dt = self.page.evaluate_handle(
            """([name, b64, mime]) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], name, { type: mime }));
                return dt;
            }""",
            [name, base64.b64encode(data).decode(), mime],
        )
        self.page.dispatch_event(".sf-canvas", "dragover", {"dataTransfer": dt})
        self.page.dispatch_event(".sf-canvas", "drop", {"dataTransfer": dt})

    def open_file(self, name: str, obj: Any) -> None:
        """Open a workflow through the toolbar's Open button and the file picker."""
        with self.page.expect_file_chooser() as fc:
            self.page.get_by_role("button", name="Open", exact=True).click()
        fc.value.set_files({"name": name, "mimeType": "application/json",
                            "buffer": json.dumps(obj).encode()})
        # the file is read and applied asynchronously (the canvas is busy meanwhile):
        # wait for its nodes, or the old graph would still be the one edited
        prompt = obj.get("prompt") if isinstance(obj, dict) \
            and obj.get("format") == "steerflow.workflow" else None
        if isinstance(prompt, dict):
            for _ in range(100):
                if set(self.node_ids()) == set(prompt) \
                        and self.page.get_by_test_id("opening").count() == 0:
                    return
                self.page.wait_for_timeout(50)
        expect(self.page.get_by_test_id("opening")).to_have_count(0)
