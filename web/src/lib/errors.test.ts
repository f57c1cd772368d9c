import { describe, expect, it } from "vitest";
import { errorMessage, isNetworkError, joinErrorText, plainIssues, unreachableText } from "./errors";

describe("error messages in one line", () => {
  it("does not repeat a message its details already say", () => {
    const message = "the prompt has no output node (e.g. Save Image), so nothing would run";
    const details = `${message}, really`;
    expect(joinErrorText(message, details)).toBe(details);
    expect(joinErrorText(details, message)).toBe(details);
    expect(joinErrorText(message, message)).toBe(message);
    expect(joinErrorText(" same ", "same")).toBe("same");
  });

  it("shows validation issues in the user's words, without the server's codes", () => {
    // the drill's muted Save Image: not "Prompt has no outputs: [no_output_node] prompt: …"
    const said = "the prompt has no output node (e.g. Save Image), so nothing would run";
    expect(joinErrorText("Prompt has no outputs", `[no_output_node] prompt: ${said}`)).toBe(said);
    // the server's details without codes (ComfyUI's front end shows them as they are)
    expect(joinErrorText("Prompt has no outputs", `${said}\n`)).toBe(said);
    expect(plainIssues("[missing_input] node 1: required input 'images' (IMAGE) is missing\n"
      + "[value_smaller_than_min] node 3: input 'steps': got -5\n... and 2 more error(s)"))
      .toBe("node 1: required input 'images' (IMAGE) is missing; node 3: input 'steps': got -5; ... and 2 more error(s)");
    expect(plainIssues("a plain [bracket] text")).toBeNull();
    expect(joinErrorText("Cannot open", "[not a code] x")).toBe("Cannot open: [not a code] x");
  });

  it("joins a message and details that say different things", () => {
    expect(joinErrorText("Prompt outputs failed validation", "KSampler #3: steps")).toBe(
      "Prompt outputs failed validation: KSampler #3: steps");
    expect(joinErrorText("only a message", "")).toBe("only a message");
    expect(joinErrorText(undefined, "only details")).toBe("only details");
    expect(joinErrorText("", "")).toBeUndefined();
  });

  it("reads the server's error bodies", () => {
    const message = "the prompt has no output node";
    expect(errorMessage({ error: { type: "prompt_no_outputs", message: "Prompt has no outputs",
      details: `[no_output_node] prompt: ${message}` } })).toBe(message);
    expect(errorMessage({ error: "plain" })).toBe("plain");
    expect(errorMessage("text body")).toBe("text body");
    expect(errorMessage("")).toBeUndefined();
    expect(errorMessage({ error: { message: 5 } })).toBeUndefined();
    expect(errorMessage(null)).toBeUndefined();
  });
});

describe("an unreachable server", () => {
  it("tells a failed fetch from an answer", () => {
    expect(isNetworkError(new TypeError("Failed to fetch"))).toBe(true); // Chromium
    expect(isNetworkError(new TypeError("NetworkError when attempting to fetch resource."))).toBe(true); // Firefox
    expect(isNetworkError(new TypeError("Load failed"))).toBe(true); // Safari
    expect(isNetworkError(new Error("400 Bad Request"))).toBe(false);
    expect(isNetworkError(new TypeError("Cannot read properties of undefined (reading 'x')"))).toBe(false);
    expect(isNetworkError("Failed to fetch")).toBe(false);
  });

  it("says the server cannot be reached, not that the prompt was rejected", () => {
    expect(unreachableText(new TypeError("Failed to fetch"))).toBe("Cannot reach the server (Failed to fetch)");
    expect(unreachableText(undefined)).toBe("Cannot reach the server");
  });
});
