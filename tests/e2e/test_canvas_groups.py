"""Groups: made from the selection, moved with their nodes, renamed, coloured, and
imported from ComfyUI."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas


def test_group_the_selection_move_it_with_its_nodes_rename_and_colour(page):
    c = Canvas(page)
    a = c.add_node("Int", 60, 80)
    b = c.add_node("Show Value", 380, 80)
    outside = c.add_node("Int", 60, 500)
    c.wait_saved(3)
    c.node(a).locator(".sf-header").click()
    c.node(b).locator(".sf-header").click(modifiers=["Shift"])
    page.keyboard.press("Control+g")
    group = page.get_by_role("group", name="Group")
    expect(group).to_be_visible()
    doc = c.document()
    assert len(doc["layout"]["groups"]) == 1
    before = {i: doc["layout"]["nodes"][i]["pos"] for i in (a, b, outside)}
    zoom = page.evaluate("() => window.steerflow.getViewport().zoom")

    title = group.locator(".sf-group-title")
    box = title.bounding_box()
    page.mouse.move(box["x"] + 40, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + 140, box["y"] + 70, steps=8)
    page.mouse.up()
    page.wait_for_function("""p => {
        const d = JSON.parse(localStorage.getItem('steerflow.autosave'));
        return d.layout.groups.length === 1 && d.layout.groups[0].bounding[0] !== p; }""",
                           arg=doc["layout"]["groups"][0]["bounding"][0])
    after = c.document()["layout"]["nodes"]
    for i in (a, b):  # the grouped nodes moved with it
        assert abs(after[i]["pos"][0] - before[i][0] - 100 / zoom) <= 2
        assert abs(after[i]["pos"][1] - before[i][1] - 60 / zoom) <= 2
    assert after[outside]["pos"] == before[outside]

    # anywhere on the bar, as in ComfyUI (the veteran's walk: only on the title's word)
    bar = title.bounding_box()
    assert bar is not None
    page.mouse.dblclick(bar["x"] + bar["width"] * 0.75, bar["y"] + bar["height"] / 2)
    field = page.get_by_label("group title")
    field.fill("Numbers")
    field.press("Enter")
    expect(page.get_by_role("group", name="Numbers")).to_be_visible()
    page.get_by_role("group", name="Numbers").locator(".sf-group-title").click(button="right")
    page.get_by_role("menuitem", name="Colour").hover()
    page.get_by_role("menuitem", name="purple", exact=True).click()
    page.wait_for_function("""() => {
        const g = JSON.parse(localStorage.getItem('steerflow.autosave')).layout.groups[0];
        return g.title === 'Numbers' && g.color === '#553355'; }""")
    # undo takes the colour back
    page.keyboard.press("Control+z")
    page.wait_for_function("""() => !JSON.parse(localStorage.getItem('steerflow.autosave'))
        .layout.groups[0].color""")


def test_comfyui_groups_are_imported_and_drawn(page):
    c = Canvas(page)
    wf = {
        "nodes": [{"id": 1, "type": "PrimitiveInt", "pos": [40, 60], "size": [260, 80],
                   "outputs": [{"name": "INT", "type": "INT", "links": []}],
                   "widgets_values": [3, "fixed"]}],
        "links": [], "version": 0.4, "extra": {},
        "groups": [{"title": "Inputs", "bounding": [0, 0, 400, 240], "color": "#8A8"}],
    }
    c.open_file("grouped.json", wf)
    expect(c.nodes()).to_have_count(1)
    group = page.get_by_role("group", name="Inputs")
    expect(group).to_be_visible()
    assert c.document()["layout"]["groups"] == [{"title": "Inputs", "bounding": [0, 0, 400, 240],
                                                  "color": "#8A8"}]
