import { describe, expect, it } from "vitest";
import { packErrorText } from "./packerrors";

describe("packErrorText", () => {
  it("says nothing when every pack loaded", () => {
    expect(packErrorText([])).toBeNull();
  });

  it("keeps the reason after an exception's bare name", () => {
    expect(packErrorText([{ pack: "p", message: "RuntimeError:\n\nneeds a GPU\nmore", whole: true }]))
      .toBe("Node packs: p failed to load (RuntimeError: needs a GPU). The server's log has the details.");
  });

  it("names the packs and the first line of why, a few at most", () => {
    const text = packErrorText([
      { pack: "/base/custom_nodes/ComfyUI-Crystools", message: "ModuleNotFoundError: No module named 'deepdiff'\nTraceback…", whole: true },
      { pack: "ComfyUI-KJNodes", message: "node 'ImageSharpenKJ' skipped: TypeError", whole: false },
      { pack: "was-node-suite-comfyui", message: "No module named 'numba'", whole: true },
    ]);
    expect(text).toBe("Node packs: ComfyUI-Crystools failed to load (ModuleNotFoundError: No module named 'deepdiff'); "
      + "ComfyUI-KJNodes loaded without some nodes (node 'ImageSharpenKJ' skipped: TypeError); 1 more "
      + "(was-node-suite-comfyui). "
      + "The server's log has the details.");
  });
});
