import { describe, expect, it } from "vitest";
import type { QueueItem } from "../api";
import { clientOf, fairQueueOf, othersRunning, othersRunningText, promptNumberText, runnableCount, turnsNote } from "./queueview";

const item = (n: number, client?: unknown): QueueItem => ({
  number: n, promptId: `p${n}`, extra: client === undefined ? {} : { client_id: client },
});

describe("queueview", () => {
  it("reads the client a prompt came from", () => {
    expect(clientOf(item(1, "abc"))).toBe("abc");
    expect(clientOf(item(2))).toBeNull();
    expect(clientOf(item(3, 7))).toBeNull();
    expect(clientOf({ number: 4, promptId: "p4" })).toBeNull();
  });

  it("counts the running prompts of other clients only", () => {
    const running = [item(1, "me"), item(2, "you"), item(3)];
    expect(othersRunning(running, "me")).toBe(2);
    expect(othersRunning([item(1, "me")], "me")).toBe(0);
    expect(othersRunning([], "me")).toBe(0);
    expect(othersRunning([item(1, "you")], undefined)).toBe(1);
  });

  it("says it in words", () => {
    expect(othersRunningText(0)).toBe("");
    expect(othersRunningText(1)).toBe("running another client's prompt");
    expect(othersRunningText(2)).toBe("running 2 other clients' prompts");
  });
});

describe("runnableCount", () => {
  it("counts the nodes that run: not the muted or bypassed (the count reached 7/9 at most)", () => {
    const prompt = { "1": { class_type: "A", inputs: {} }, "2": { class_type: "B", inputs: {}, mode: "muted" },
      "3": { class_type: "C", inputs: {}, mode: "bypass" }, "4": { class_type: "D", inputs: {} } };
    expect(runnableCount(prompt)).toBe(2);
    expect(runnableCount(undefined)).toBe(0);
  });

  it("says the numbers are not the run order only when the server takes clients in turns", () => {
    const two = [item(1, "a"), item(2, "a"), item(3, "b")];
    expect(turnsNote(false, two)).toBeNull(); // a default server runs them by number (ComfyUI's order)
    expect(turnsNote(true, two)).toMatch(/in turns/);
    expect(turnsNote(true, [item(1, "a"), item(2, "a")])).toBeNull();
    expect(fairQueueOf({ system: { fair_queue: true } })).toBe(true);
    expect(fairQueueOf({ system: { fair_queue: false } })).toBe(false);
    expect(fairQueueOf({ system: { os: "posix" } })).toBe(false); // absent: number order
    expect(fairQueueOf({ system: { fair_queue: "yes" } })).toBe(false);
    expect(fairQueueOf(null)).toBe(false);
  });
});

describe("promptNumberText", () => {
  it("shows a prompt queued at the front as such, not as a negative number", () => {
    expect(promptNumberText(12)).toBe("#12");
    expect(promptNumberText(-25)).toBe("front");
  });
});
