import { describe, expect, it } from "vitest";
import { RunStore } from "./runstore";

const rejected = {
  "3": {
    class_type: "KSampler",
    errors: [
      { type: "value_smaller_than_min", message: "input 'seed': got -1", extra_info: { input_name: "seed" } },
      { type: "invalid_value", message: "input 'cfg': got 'abc'", extra_info: { input_name: "cfg" } },
    ],
  },
  "9": {
    class_type: "SaveImage",
    errors: [{ type: "required_input_missing", message: "required input 'images' is missing", extra_info: { input_name: "images" } }],
  },
};

describe("RunStore: errors after the user fixes what they were about", () => {
  it("forgets one input's issues when it is edited, keeping the node's others", () => {
    const store = new RunStore(() => undefined, () => undefined);
    store.setValidationErrors(rejected);
    store.clearInputErrors("3", "seed");
    expect(store.getNode("3").errors?.map((e) => e.input)).toEqual(["cfg"]);
    expect(store.getNode("3").status).toBe("error");
    store.clearInputErrors("3", "cfg");
    expect(store.getNode("3").errors).toBeUndefined();
    expect(store.getNode("3").status).toBeUndefined();
    // a link into the missing input fixes that node
    store.clearInputErrors("9", "images");
    expect(store.getNode("9")).toEqual({ status: undefined, errors: undefined });
  });

  it("leaves records untouched (no re-render) when the input had no issue", () => {
    const store = new RunStore(() => undefined, () => undefined);
    store.setValidationErrors(rejected);
    const before = store.getNode("3");
    store.clearInputErrors("3", "steps");
    store.clearInputErrors("42", "seed");
    expect(store.getNode("3")).toBe(before);
  });

  it("says the rejection again as its inputs are fixed, and drops it (and the status bar's error) when none is left", () => {
    const store = new RunStore(() => undefined, () => undefined);
    store.setValidationErrors(rejected);
    const count = (marked: Record<string, { errors?: unknown[] }>) =>
      Object.values(marked).reduce((n, e) => n + (e.errors?.length ?? 0), 0);
    store.setRejection((marked) => (count(marked) ? `Prompt rejected: ${count(marked)} left` : null));
    expect(store.getGlobal().rejection).toBe("Prompt rejected: 3 left");
    expect(store.getGlobal().lastError).toBe("Prompt rejected: 3 left");
    store.clearInputErrors("3", "seed");
    expect(store.getGlobal().lastError).toBe("Prompt rejected: 2 left");
    expect(Object.keys(store.markedErrors())).toEqual(["3", "9"]);
    expect(store.markedErrors()["3"].errors?.[0].extra_info?.input_name).toBe("cfg");
    store.clearInputErrors("3", "cfg");
    store.clearInputErrors("9", "images");
    expect(store.getGlobal().rejection).toBeNull();
    expect(store.getGlobal().lastError).toBeNull();
  });

  it("leaves another error in the status bar, and forgets the rejection on the next Queue or run", () => {
    const store = new RunStore(() => undefined, () => undefined);
    store.setValidationErrors(rejected);
    store.setRejection((marked) => (Object.keys(marked).length ? "rejected" : null));
    store.setLastError("a run failed");
    store.clearInputErrors("9", "images");
    store.clearInputErrors("3", "seed");
    store.clearInputErrors("3", "cfg");
    expect(store.getGlobal().rejection).toBeNull();
    expect(store.getGlobal().lastError).toBe("a run failed");
    // a rejection with nothing marked (no output node) stays until the next Queue
    store.setRejection(() => "Prompt rejected: no output node");
    expect(store.getGlobal().lastError).toBe("Prompt rejected: no output node");
    store.clearErrors();
    expect(store.getGlobal().rejection).toBeNull();
    expect(store.getGlobal().lastError).toBeNull();
    store.setValidationErrors(rejected);
    store.setRejection(() => "rejected");
    store.reset();
    expect(store.getGlobal().rejection).toBeNull();
  });

  it("forgets the status bar's error when another graph is opened", () => {
    const store = new RunStore(() => undefined, () => undefined);
    store.setLastError("Prompt rejected: …");
    store.reset();
    expect(store.getGlobal().lastError).toBeNull();
  });
});

describe("RunStore: an interrupt that restarted the worker", () => {
  it("says why the next run waits, from the server's steerflow_note", () => {
    const flushes: (() => void)[] = [];
    const store = new RunStore((fn) => { flushes.push(fn); }, () => undefined);
    store.enqueue({ type: "execution_start", data: { prompt_id: "p" } });
    store.enqueue({ type: "execution_interrupted", data: { prompt_id: "p", node_id: "3", steerflow_note: "the worker was restarted" } });
    flushes.splice(0).forEach((f) => f());
    expect(store.getGlobal().lastError).toBe("interrupted: the worker was restarted");
    store.enqueue({ type: "execution_start", data: { prompt_id: "q" } });
    store.enqueue({ type: "execution_interrupted", data: { prompt_id: "q", node_id: "3" } });
    flushes.splice(0).forEach((f) => f());
    expect(store.getGlobal().lastError).toBe("interrupted");
  });
});
