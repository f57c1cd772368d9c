/**
 * ComfyUI's COLOR widget: a colour picker beside the value's text (lib/color.ts). A value that
 * is no colour is marked here; its message is the input row's (lib/inputissue.ts).
 */

import { colorIssue, fromPicker, pickerValue } from "../../lib/color";
import { useEditor } from "../context";
import type { WidgetProps } from "./types";

export function ColorWidget({ nodeId, input, value }: WidgetProps) {
  const { setValue } = useEditor();
  const text = value == null ? "" : String(value);
  const issue = colorIssue(text);
  return (
    <div className={`sf-widget-color${issue ? " sf-invalid" : ""}`}>
      <div className="sf-row-inline">
        <input
          type="color"
          className="nodrag sf-color-swatch"
          aria-label={`${input.name} picker`}
          title="Pick a colour"
          value={pickerValue(text)}
          onChange={(e) => setValue(nodeId, input.name, fromPicker(e.target.value, text))}
        />
        <input
          type="text"
          className="nodrag"
          name={input.name}
          aria-label={input.name}
          aria-invalid={issue ? true : undefined}
          spellCheck={false}
          value={text}
          onChange={(e) => setValue(nodeId, input.name, e.target.value)}
        />
      </div>
    </div>
  );
}
