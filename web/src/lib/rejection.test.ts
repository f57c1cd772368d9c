import { describe, expect, it } from "vitest";
import { summariseRejection } from "./rejection";

const titles: Record<string, string> = { 3: "KSampler", 9: "Save Image", 4: "Load Checkpoint" };
const titleOf = (id: string) => titles[id] ?? "node";
const err = (input?: string) => ({ type: "x", message: `a long message about ${input ?? "the node"}`, extra_info: { input_name: input ?? null } });

describe("a rejected prompt's toast", () => {
  it("counts the inputs and names the nodes, without repeating the messages", () => {
    const r = summariseRejection({ 9: { errors: [err("images")] }, 3: { errors: [err("seed"), err("steps")] } }, titleOf)!;
    expect(r.text).toBe("3 inputs need attention: KSampler #3 (seed, steps), Save Image #9 (images)");
    expect(r.text).not.toContain("long message");
    expect(r.nodes).toEqual(["3", "9"]);
  });

  it("counts problems that are not about an input, and cuts a long list", () => {
    expect(summariseRejection({ 4: { errors: [err()] } }, titleOf)!.text).toBe("1 problem needs attention: Load Checkpoint #4");
    const many = summariseRejection({ 3: { errors: [err("seed")] }, 4: { errors: [err()] }, 9: { errors: [err("images")] },
      10: { errors: [err("a")] }, 11: { errors: [err("b")] } }, titleOf, 3)!;
    expect(many.text).toBe("4 inputs and 1 other problem need attention: KSampler #3 (seed), Load Checkpoint #4, "
      + "Save Image #9 (images), and 2 more nodes");
    expect(summariseRejection({}, titleOf)).toBeNull();
  });
});
