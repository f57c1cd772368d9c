import { describe, expect, it } from "vitest";
import { widgetDefs } from "./frontendwidgets.fixture";
import { defaultValues } from "./schema";
import { cameraErrorText, captureAll, captureSize, captureValue, capturesOnQueue, type Capturer, registerCapturer } from "./webcam";

describe("WEBCAM widget", () => {
  it("is a widget holding the capture's name, empty at first", () => {
    const def = widgetDefs().get("WebcamCapture")!;
    expect(def.inputs[0]).toMatchObject({ name: "image", type: "WEBCAM", widget: true, required: true });
    expect(defaultValues(def)).toEqual({ image: "", width: 0, height: 0, capture_on_queue: true });
  });

  it("names an upload as ComfyUI's front end does", () => {
    expect(captureValue("1700000000000.png")).toBe("webcam/1700000000000.png [temp]");
    expect(captureValue("1.png", "webcam/")).toBe("webcam/1.png [temp]");
    expect(captureValue("1 (1).png", "webcam")).toBe("webcam/1 (1).png [temp]");
  });

  it("captures at the widgets' size, else the camera's, else 640×480, bounded", () => {
    expect(captureSize(320, 200, 1280, 720)).toEqual({ width: 320, height: 200 });
    expect(captureSize(0, 0, 1280, 720)).toEqual({ width: 1280, height: 720 });
    expect(captureSize(0, "x", 0, 0)).toEqual({ width: 640, height: 480 });
    expect(captureSize(99999, 1, 0, 0)).toEqual({ width: 16384, height: 1 });
  });

  it("captures on Queue only for nodes with capture_on_queue on and a live camera", async () => {
    const nodes = [
      { id: "1", type: "WebcamCapture", values: { capture_on_queue: true } },
      { id: "2", type: "WebcamCapture", values: { capture_on_queue: false } },
      { id: "3", type: "WebcamCapture", values: {} },
      { id: "4", type: "LoadImage", values: {} },
    ];
    expect(capturesOnQueue(nodes)).toEqual(["1", "3"]);
    const registry = new Map<string, Capturer>([
      ["1", async () => "webcam/1.png [temp]"], ["2", async () => "webcam/2.png [temp]"], ["3", async () => null],
    ]);
    expect(await captureAll(nodes, registry)).toEqual(new Map([["1", "webcam/1.png [temp]"]]));
    registry.set("1", async () => {
      throw new Error("413 too large");
    });
    await expect(captureAll(nodes, registry)).rejects.toThrow("Webcam Capture #1: the capture could not be uploaded (413 too large)");
  });

  it("registers and unregisters a node's capture", async () => {
    const nodes = [{ id: "w", type: "WebcamCapture", values: {} }];
    const off = registerCapturer("w", async () => "webcam/w.png [temp]");
    expect(await captureAll(nodes)).toEqual(new Map([["w", "webcam/w.png [temp]"]]));
    off();
    expect(await captureAll(nodes)).toEqual(new Map());
  });

  it("says why the camera is not shown", () => {
    expect(cameraErrorText({ name: "NotAllowedError" }, true)).toMatch(/blocked: allow it/);
    expect(cameraErrorText({ name: "NotFoundError" }, true)).toMatch(/No camera was found/);
    expect(cameraErrorText(new Error("x"), false)).toMatch(/secure page/);
    expect(cameraErrorText(new Error("boom"), true)).toBe("The camera could not start: boom.");
  });
});
