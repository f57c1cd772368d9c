import { describe, expect, it } from "vitest";
import { arrangeOpened, makeRoomBelow, ROOM_GAP } from "./arrange";
import { GROUP_PAD, type GroupBox } from "./groups";
import { overlaps, type Rect } from "./layout";

const r = (x: number, y: number, width: number, height: number): Rect => ({ x, y, width, height });

/** The rectangles at their new places. */
function placed(rects: Map<string, Rect>, positions: Map<string, { x: number; y: number }>): Map<string, Rect> {
  return new Map([...rects].map(([id, rect]) => [id, { ...rect, ...(positions.get(id) ?? {}) }]));
}

describe("makeRoomBelow", () => {
  it("moves the nodes a grown node covers down the column, in order, and leaves the rest", () => {
    const rects = new Map([
      ["sampler", r(0, 0, 260, 622)], // grew from 374 with its preview
      ["decode", r(0, 400, 260, 100)], // was 26 px below it
      ["save", r(0, 540, 260, 300)],
      ["beside", r(300, 0, 260, 700)], // another column
      ["far", r(0, 2000, 260, 100)], // below, but not reached
    ]);
    const moved = makeRoomBelow(rects, ["sampler"]);
    expect(moved.get("decode")).toEqual({ x: 0, y: 622 + ROOM_GAP });
    expect(moved.get("save")).toEqual({ x: 0, y: 622 + ROOM_GAP + 100 + ROOM_GAP });
    expect(moved.has("beside")).toBe(false);
    expect(moved.has("far")).toBe(false);
    expect(moved.has("sampler")).toBe(false);
    expect(overlaps(placed(rects, moved))).toEqual([]);
  });

  it("moves only nodes below the grown one's top, and never a fixed one", () => {
    const rects = new Map([
      ["grown", r(0, 100, 260, 400)],
      ["above", r(100, 0, 260, 200)], // overlapped, but its top is higher: left alone
      ["pinned", r(0, 300, 260, 100)],
      ["under", r(0, 450, 260, 100)],
    ]);
    const moved = makeRoomBelow(rects, ["grown"], new Set(["pinned"]));
    expect([...moved.keys()]).toEqual(["under"]);
    expect(moved.get("under")!.y).toBe(500 + ROOM_GAP);
  });

  it("moves nothing when the grown node covers nothing", () => {
    expect(makeRoomBelow(new Map([["a", r(0, 0, 100, 100)], ["b", r(0, 200, 100, 100)]]), ["a"]).size).toBe(0);
  });
});

describe("arrangeOpened", () => {
  it("pushes taller nodes' neighbours down their columns, keeping columns and order", () => {
    // as a ComfyUI file stores them, then measured taller on our canvas
    const rects = new Map([
      ["ckpt", r(0, 0, 315, 160)], // stored 98 high
      ["vae", r(0, 130, 315, 110)], // was 32 px below the checkpoint
      ["pos", r(400, 0, 400, 200)],
      ["neg", r(400, 180, 400, 200)],
      ["sampler", r(900, 0, 315, 374)],
    ]);
    const { positions } = arrangeOpened(rects, []);
    expect(overlaps(placed(rects, positions))).toEqual([]);
    expect(positions.get("ckpt")).toEqual({ x: 0, y: 0 });
    expect(positions.get("vae")).toEqual({ x: 0, y: 160 + ROOM_GAP });
    expect(positions.get("neg")).toEqual({ x: 400, y: 200 + ROOM_GAP });
    expect(positions.get("sampler")).toEqual({ x: 900, y: 0 });
  });

  it("moves a node right past a neighbour it overlaps at the same height", () => {
    const rects = new Map([["a", r(0, 0, 220, 100)], ["b", r(200, 0, 220, 100)]]); // stored 200 wide, shown 220
    const { positions } = arrangeOpened(rects, []);
    expect(positions.get("b")).toEqual({ x: 220 + ROOM_GAP, y: 0 });
  });

  it("grows a group around its nodes and moves what lies below the group", () => {
    const groups: GroupBox[] = [{ title: "Load", bounding: [-10, -50, 360, 250], color: "#a1309b" }];
    const rects = new Map([
      ["ckpt", r(0, 0, 315, 160)],
      ["vae", r(0, 130, 315, 110)], // inside the group, pushed below its bottom edge
      ["note", r(0, 220, 315, 80)], // below the group, outside it
    ]);
    const arranged = arrangeOpened(rects, groups);
    const vae = arranged.positions.get("vae")!;
    expect(vae).toEqual({ x: 0, y: 160 + ROOM_GAP });
    const [gx, gy, gw, gh] = arranged.groups[0].bounding;
    expect([gx, gy, gw]).toEqual([-10, -50, 360]);
    expect(gy + gh).toBe(vae.y + 110 + GROUP_PAD); // holds the pushed node
    expect(arranged.groups[0].title).toBe("Load");
    expect(arranged.groups[0].color).toBe("#a1309b");
    // the note, outside the group, is moved below the grown group
    expect(arranged.positions.get("note")!.y).toBe(gy + gh + ROOM_GAP);
  });

  it("moves a group with its nodes, and a nested group with its parent", () => {
    const groups: GroupBox[] = [
      { title: "top", bounding: [0, 0, 400, 300] },
      { title: "below", bounding: [0, 320, 400, 600] },
      { title: "inner", bounding: [10, 360, 380, 200] },
    ];
    const rects = new Map([
      ["a", r(20, 40, 300, 400)], // in "top", taller than it: "top" grows over "below"
      ["b", r(20, 400, 300, 100)], // in "inner"
      ["c", r(20, 700, 300, 100)], // in "below"
    ]);
    const arranged = arrangeOpened(rects, groups);
    const top = arranged.groups[0].bounding;
    const dy = top[1] + top[3] + ROOM_GAP - 320;
    expect(arranged.groups[1].bounding[1]).toBe(320 + dy);
    expect(arranged.groups[2].bounding[1]).toBe(360 + dy);
    expect(arranged.positions.get("b")).toEqual({ x: 20, y: 400 + dy });
    expect(arranged.positions.get("c")).toEqual({ x: 20, y: 700 + dy });
    expect(overlaps(placed(rects, arranged.positions))).toEqual([]);
  });

  it("leaves a graph that already fits as it is", () => {
    const rects = new Map([["a", r(0, 0, 300, 100)], ["b", r(0, 140, 300, 100)], ["c", r(340, 0, 300, 300)]]);
    const groups: GroupBox[] = [{ title: "g", bounding: [-20, -60, 700, 420] }];
    const arranged = arrangeOpened(rects, groups);
    expect(arranged.positions).toEqual(new Map([["a", { x: 0, y: 0 }], ["b", { x: 0, y: 140 }], ["c", { x: 340, y: 0 }]]));
    expect(arranged.groups).toEqual(groups);
  });
});
