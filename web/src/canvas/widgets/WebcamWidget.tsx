/**
 * ComfyUI's WEBCAM widget (Webcam Capture's `image`): the camera's live picture and a Capture
 * button that uploads the frame to temp/webcam/ and makes its name the value
 * (`webcam/<time>.png [temp]`). With capture_on_queue on, Queue takes a fresh capture first
 * and sends it in the prompt, the value staying as it is, as in ComfyUI (lib/webcam.ts); the
 * node shows the newest capture. A camera the browser refuses, or none, is a message on the node with a
 * Retry button; the last capture stays the value.
 */

import { useCallback, useEffect, useRef, useState } from "react";
import { uploadCapture, viewUrl } from "../../api";
import { parseAnnotated } from "../../lib/feedback";
import { cameraErrorText, captureFileName, captureSize, captureValue, registerCapturer } from "../../lib/webcam";
import { useEditor } from "../context";
import type { WidgetProps } from "./types";

type CameraState = "starting" | "live" | "error" | "off";

export function WebcamWidget({ nodeId, input, value, values }: WidgetProps) {
  const { setValue } = useEditor();
  const video = useRef<HTMLVideoElement>(null);
  const stream = useRef<MediaStream | null>(null);
  const sizeRef = useRef(values);
  sizeRef.current = values;
  const [state, setState] = useState<CameraState>("off");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  /** The newest capture, from the button or a Queue. */
  const [latest, setLatest] = useState<string | null>(null);

  const stop = useCallback(() => {
    stream.current?.getTracks().forEach((t) => t.stop());
    stream.current = null;
    if (video.current) video.current.srcObject = null;
  }, []);

  const start = useCallback(async () => {
    stop();
    setError(null);
    const media = typeof navigator !== "undefined" ? navigator.mediaDevices : undefined;
    if (!media?.getUserMedia) {
      setError(cameraErrorText({ name: window.isSecureContext ? "NoMediaDevices" : "" }, window.isSecureContext));
      setState("error");
      return;
    }
    setState("starting");
    try {
      const s = await media.getUserMedia({ video: true, audio: false });
      stream.current = s;
      if (video.current) {
        video.current.srcObject = s;
        await video.current.play().catch(() => undefined); // autoplay may wait for the first frame
      }
      setState("live");
    } catch (e) {
      setError(cameraErrorText(e, window.isSecureContext));
      setState("error");
    }
  }, [stop]);

  useEffect(() => {
    void start();
    return stop;
  }, [start, stop]);

  /** Draw the current frame, upload it; its value, or null when the camera is not live. */
  const capture = useCallback(async (): Promise<string | null> => {
    const v = video.current;
    if (!v || !stream.current?.active || v.readyState < 2) return null;
    const { width, height } = captureSize(sizeRef.current.width, sizeRef.current.height, v.videoWidth, v.videoHeight);
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    if (!ctx) throw new Error("the browser cannot draw the frame");
    ctx.drawImage(v, 0, 0, width, height);
    const blob = await new Promise<Blob | null>((resolve) => canvas.toBlob(resolve, "image/png"));
    if (!blob) throw new Error("the browser could not encode the frame");
    const res = await uploadCapture(new File([blob], captureFileName(Date.now()), { type: "image/png" }));
    const name = captureValue(res.name, res.subfolder);
    setLatest(name);
    return name;
  }, []);

  useEffect(() => registerCapturer(nodeId, capture), [nodeId, capture]);

  const current = typeof value === "string" ? value : "";
  const shown = latest ?? current;
  const queued = latest !== null && latest !== current; // taken on Queue, sent in the prompt
  return (
    <div className="sf-widget-webcam">
      <div className="sf-webcam-view nodrag nowheel">
        <video ref={video} muted playsInline autoPlay aria-label={`${input.name} camera`} hidden={state !== "live"} />
        {state === "starting" && <div className="sf-webcam-note">Waiting for the camera…</div>}
        {error && state !== "starting" && <div className="sf-webcam-note sf-issue" role="alert">{error}</div>}
      </div>
      <div className="sf-row-inline">
        <button
          type="button"
          className="nodrag sf-small"
          disabled={state !== "live" || busy}
          onClick={async () => {
            setBusy(true);
            try {
              const next = await capture();
              if (next) setValue(nodeId, input.name, next);
              else setError("The camera has no picture yet: wait a moment, then capture again.");
            } catch (e) {
              setError(`The capture could not be uploaded: ${(e as Error).message}`);
            } finally {
              setBusy(false);
            }
          }}
        >
          {busy ? "…" : "Capture"}
        </button>
        {state === "error" && <button type="button" className="nodrag sf-small" onClick={() => void start()}>Retry</button>}
        <span className="sf-webcam-value" title={current || "no capture yet"} data-testid="webcam-value">
          {current || "no capture yet"}
        </span>
      </div>
      {queued && <div className="sf-webcam-note" data-testid="webcam-queued" title={shown}>sent on Queue: {shown}</div>}
      {shown && (
        // a capture from another session may be gone (temp/ is cleared when the server starts)
        <img key={shown} className="sf-upload-preview" alt={`${input.name} capture`} src={viewUrl(parseAnnotated(shown))}
          onError={(e) => (e.currentTarget.hidden = true)} />
      )}
    </div>
  );
}
