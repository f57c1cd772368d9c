import { describe, expect, it } from "vitest";
import type { QueueItem } from "../api";
import { clientOf, othersRunning, othersRunningText, runnableCount } from "./queueview";

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
});
