/** Widgets for constant inputs, chosen from the input's schema. */

import { memo, type PointerEvent as ReactPointerEvent, useEffect, useRef, useState } from "react";
import { viewUrl } from "../api";
import { isAnnotated, parseAnnotated } from "../lib/feedback";
import { checkCombo } from "../lib/missingmodels";
import { CONTROL_MODES, type ControlMode } from "../lib/schema";
import { toBigInt } from "../lib/exactint";
import { DRAG_THRESHOLD_PX, dragValue, numberIssue, numberText, parseWidgetText, stepValue } from "../lib/widgetcheck";
import { openMaskEditor } from "../editor/MaskEditor";
import { useEditor } from "./context";
import { useFitText } from "./useFitText";
import { MODEL_FOLDERS, ModelCardLine } from "./ModelCard";
import { BoundingBoxWidget } from "./widgets/BoundingBoxWidget";
import { ColorWidget } from "./widgets/ColorWidget";
import { CustomComboWidget } from "./widgets/CustomComboWidget";
import { ImageCompareWidget } from "./widgets/ImageCompareWidget";
import type { WidgetProps } from "./widgets/types";
import { WebcamWidget } from "./widgets/WebcamWidget";
import "./widgets/widgets.css";

/** A press on a number field not being edited: a horizontal drag changes the value, a click edits it. */
type Drag = { pointer: number; x: number; start: number | string; moved: boolean };

function NumberWidget({ nodeId, input, value, control }: WidgetProps) {
  const { setValue, setControl, holdHistory } = useEditor();
  const [text, setText] = useState(() => numberText(value));
  const focused = useRef(false);
  const drag = useRef<Drag | null>(null);
  const field = useRef<HTMLInputElement>(null);
  // a long value (a 64-bit seed) is drawn smaller to show whole; the node keeps its size
  const cut = useFitText(field, text);
  // the value the field's text was last committed as: a change from elsewhere (control
  // after generate, once a Ctrl+Enter queued the typed seed) shows even while it has the
  // focus, so what it shows is what runs next, and leaving it does not write back the old
  const committed = useRef(value);
  useEffect(() => {
    if (!focused.current || value !== committed.current) setText(numberText(value));
    committed.current = value;
  }, [value, input]);
  // What the user typed is what runs: a number as typed, anything else as its text (marked
  // here, refused by the server), never clamped or rounded behind their back.
  const commit = (s: string) => {
    const n = parseWidgetText(input, s);
    const v = n === null ? s : n;
    committed.current = v;
    if (v !== value) setValue(nodeId, input.name, v);
  };
  const issue = numberIssue(input, value);
  const { min, max } = input.options;
  const slider = input.options.display === "slider" && typeof min === "number" && typeof max === "number";
  const stepAttr = typeof input.options.step === "number" ? input.options.step : input.type === "INT" ? 1 : "any";
  const steppable = typeof value === "number" || (input.type === "INT" && typeof value === "string" && toBigInt(value) !== null);
  const draggedTo = (e: ReactPointerEvent<HTMLInputElement>): number | string | null => {
    const d = drag.current;
    if (!d || d.pointer !== e.pointerId) return null;
    const dx = e.clientX - d.x;
    if (!d.moved && Math.abs(dx) < DRAG_THRESHOLD_PX) return null;
    if (!d.moved) {
      d.moved = true;
      holdHistory(true); // the whole drag is one undo step
    }
    return dragValue(input, d.start, dx);
  };
  return (
    <div className={`sf-widget-number${issue ? " sf-invalid" : ""}`}>
      <div className="sf-widget-number-row">
        {slider && (
          <input
            type="range"
            className="nodrag"
            aria-label={`${input.name} slider`}
            min={min}
            max={max}
            step={stepAttr}
            value={typeof value === "number" ? value : 0}
            onChange={(e) => setValue(nodeId, input.name, Number(e.target.value))}
          />
        )}
        <input
          ref={field}
          type="text"
          inputMode={input.type === "INT" ? "numeric" : "decimal"}
          className="nodrag sf-number-drag"
          name={input.name}
          aria-label={input.name}
          aria-invalid={issue ? true : undefined}
          title={issue ?? `${cut ? `${text}\n` : ""}Drag left or right to change, click to type`}
          value={text}
          // As in ComfyUI: drag sideways on the field to change the value, one step per pixel;
          // a click without moving puts the caret in it for typing.
          onMouseDown={(e) => {
            if (document.activeElement !== e.currentTarget && e.button === 0) e.preventDefault();
          }}
          onPointerDown={(e) => {
            if (document.activeElement === e.currentTarget || e.button !== 0) return;
            // the press does not focus this field (a drag, or a click that focuses on release):
            // the field being edited before is left, as a press on the canvas would
            if (document.activeElement instanceof HTMLElement) document.activeElement.blur();
            drag.current = { pointer: e.pointerId, x: e.clientX, start: steppable ? (value as number | string) : "", moved: false };
            e.currentTarget.setPointerCapture(e.pointerId);
          }}
          onPointerMove={(e) => {
            const v = draggedTo(e);
            if (v !== null && v !== value) setValue(nodeId, input.name, v);
          }}
          onPointerUp={(e) => {
            const d = drag.current;
            if (!d || d.pointer !== e.pointerId) return;
            const v = draggedTo(e);
            drag.current = null;
            if (d.moved) {
              holdHistory(false);
              // one more edit after the hold is lifted: it records the drag as one undo step
              setValue(nodeId, input.name, v ?? value);
            } else {
              e.currentTarget.focus();
              e.currentTarget.select();
            }
          }}
          onPointerCancel={() => {
            if (drag.current?.moved) holdHistory(false);
            drag.current = null;
          }}
          onFocus={() => (focused.current = true)}
          onChange={(e) => {
            setText(e.target.value);
            commit(e.target.value);
          }}
          onBlur={(e) => {
            focused.current = false;
            commit(e.target.value);
            const n = parseWidgetText(input, e.target.value);
            if (n !== null) setText(numberText(n));
          }}
          onKeyDown={(e) => {
            if (e.key === "Enter") (e.target as HTMLInputElement).blur();
            if ((e.key === "ArrowUp" || e.key === "ArrowDown") && steppable) {
              e.preventDefault();
              const v = stepValue(input, value as number | string, e.key === "ArrowUp" ? 1 : -1);
              setValue(nodeId, input.name, v);
              setText(numberText(v));
            }
          }}
        />
        {control && (
          <select
            className="nodrag sf-control"
            aria-label={`${input.name} control after generate`}
            title="control after generate"
            value={control}
            onChange={(e) => setControl(nodeId, input.name, e.target.value as ControlMode)}
          >
            {CONTROL_MODES.map((m) => (
              <option key={m} value={m}>{m}</option>
            ))}
          </select>
        )}
      </div>
    </div>
  );
}

/**
 * A text box the browser owns: React writes a controlled textarea's text back into the
 * DOM on every keystroke, which closes the browser's undo group, so Ctrl+Z took back one
 * character a press. Here the box keeps what the user types, the graph gets each change,
 * and only a change from elsewhere (the graph's undo, a loaded file) is written into it.
 */
function useTypedText<E extends HTMLInputElement | HTMLTextAreaElement>(
  value: unknown, commit: (text: string) => void,
) {
  const text = value == null ? "" : String(value);
  const ref = useRef<E>(null);
  const sent = useRef(text);
  const [initial] = useState(text);
  useEffect(() => {
    if (text !== sent.current) {
      sent.current = text;
      if (ref.current && ref.current.value !== text) ref.current.value = text;
    }
  }, [text]);
  const onChange = (e: { target: { value: string } }) => {
    sent.current = e.target.value;
    commit(e.target.value);
  };
  return { ref, defaultValue: initial, onChange };
}

function TextArea({ nodeId, input, value }: WidgetProps) {
  const { setValue } = useEditor();
  const typed = useTypedText<HTMLTextAreaElement>(value, (next) => setValue(nodeId, input.name, next));
  return (
    <textarea
      className="nodrag nowheel"
      name={input.name}
      aria-label={input.name}
      placeholder={input.name}
      rows={3}
      {...typed}
    />
  );
}

function TextLine({ nodeId, input, value }: WidgetProps) {
  const { setValue } = useEditor();
  const typed = useTypedText<HTMLInputElement>(value, (next) => setValue(nodeId, input.name, next));
  return <input type="text" className="nodrag" name={input.name} aria-label={input.name} {...typed} />;
}

function TextWidget(props: WidgetProps) {
  return props.input.options.multiline ? <TextArea {...props} /> : <TextLine {...props} />;
}

function BoolWidget({ nodeId, input, value }: WidgetProps) {
  const { setValue } = useEditor();
  return (
    <label className="sf-widget-bool nodrag">
      <input
        type="checkbox"
        name={input.name}
        aria-label={input.name}
        checked={!!value}
        onChange={(e) => setValue(nodeId, input.name, e.target.checked)}
      />
      {value ? "true" : "false"}
    </label>
  );
}

/** A Load Image value's preview: input/, or the folder an annotated name names ("x.png [output]"). */
function inputImageUrl(value: string): string {
  return viewUrl(parseAnnotated(value));
}

function ComboWidget({ nodeId, input, value }: WidgetProps) {
  const { setValue, upload } = useEditor();
  const [busy, setBusy] = useState(false);
  const [failed, setFailed] = useState<string | null>(null);
  const fileRef = useRef<HTMLInputElement>(null);
  const choices = input.choices ?? [];
  const current = value == null ? "" : String(value);
  // An annotated name ("x.png [output]") is not among the input folder's choices; the server checks it exists.
  const isUpload = input.options.upload === "image";
  const missing = current !== "" && !choices.includes(current) && !(isUpload && isAnnotated(current));
  // a model the server lacks, or an ordinary combo's value that is no choice (lib/missingmodels.ts)
  const check = checkCombo(input, value);
  return (
    <div className={`sf-widget-combo${check ? " sf-invalid" : ""}`}>
      <div className="sf-row-inline">
        <select
          className="nodrag nowheel"
          name={input.name}
          aria-label={input.name}
          aria-invalid={check ? true : undefined}
          value={current}
          onChange={(e) => setValue(nodeId, input.name, e.target.value)}
        >
          {current === "" && <option value="">(none)</option>}
          {missing && <option value={current}>{current} {check?.kind === "choice" ? "(not in list)" : "(missing)"}</option>}
          {!missing && current !== "" && !choices.includes(current) && <option value={current}>{current}</option>}
          {choices.map((c) => (
            <option key={c} value={c}>{c}</option>
          ))}
        </select>
        {isUpload && (
          <>
            <button
              type="button"
              className="nodrag sf-small"
              disabled={busy}
              onClick={() => fileRef.current?.click()}
              title="Upload an image to the input folder"
            >
              {busy ? "…" : "Upload"}
            </button>
            <input
              ref={fileRef}
              type="file"
              accept="image/*"
              hidden
              aria-label={`${input.name} upload`}
              onChange={async (e) => {
                const file = e.target.files?.[0];
                e.target.value = "";
                if (!file) return;
                setBusy(true);
                setFailed(null);
                try {
                  await upload(nodeId, input.name, file);
                } catch (err) {
                  setFailed((err as Error).message);
                } finally {
                  setBusy(false);
                }
              }}
            />
          </>
        )}
      </div>
      {failed && <div className="sf-issue">{failed}</div>}
      {MODEL_FOLDERS[input.name] && <ModelCardLine folder={MODEL_FOLDERS[input.name]} name={current} />}
      {isUpload && current && (
        // the button sits on the image, which is never shorter than it (a 40:1 panorama's
        // preview is a few pixels high: the button covered Upload)
        <div className="sf-upload-figure">
          <img className="sf-upload-preview" alt={current} src={inputImageUrl(current)} />
          <button type="button" className="nodrag sf-small sf-mask-open" aria-label="Open in MaskEditor"
            title="Paint a mask on this image (Load Image's MASK output)"
            onClick={() => openMaskEditor({ image: current, onSave: (v) => setValue(nodeId, input.name, v) })}>
            Mask
          </button>
        </div>
      )}
    </div>
  );
}

export const Widget = memo(function Widget(props: WidgetProps) {
  if (props.input.draw === "customCombo") return <CustomComboWidget {...props} />;
  if (props.input.draw === "color") return <ColorWidget {...props} />;
  switch (props.input.type) {
    case "INT":
    case "FLOAT":
      return <NumberWidget {...props} />;
    case "STRING":
      return <TextWidget {...props} />;
    case "BOOLEAN":
      return <BoolWidget {...props} />;
    case "COMBO":
      return <ComboWidget {...props} />;
    case "BOUNDING_BOX":
      return <BoundingBoxWidget {...props} />;
    case "COLOR":
      return <ColorWidget {...props} />;
    case "WEBCAM":
      return <WebcamWidget {...props} />;
    case "IMAGECOMPARE":
      return <ImageCompareWidget {...props} />;
    default:
      return null;
  }
});
