/**
 * Custom Combo's widgets, as ComfyUI's front end draws them: the dropdown (`choice`) and the
 * option boxes under it, a new empty box opening when the last one is typed into; here each
 * filled box also has a remove button (lib/customcombo.ts).
 */

import { chooseOption, comboChoices, editOption, optionSlots, removeOption, replaceCombo } from "../../lib/customcombo";
import { useEditor } from "../context";
import type { WidgetProps } from "./types";

export function CustomComboWidget({ nodeId, input, values }: WidgetProps) {
  const { updateValues } = useEditor();
  const slots = optionSlots(values);
  const choices = comboChoices(slots);
  const choice = values.choice == null ? "" : String(values.choice);
  const edit = (fn: (v: Readonly<Record<string, unknown>>) => Record<string, unknown>) =>
    updateValues(nodeId, (v) => replaceCombo(v, fn(v)));
  return (
    <div className="sf-widget-customcombo">
      <select
        className="nodrag nowheel"
        name={input.name}
        aria-label={input.name}
        value={choice}
        onChange={(e) => edit((v) => chooseOption(v, e.target.value))}
      >
        {choice === "" && <option value="">{choices.length ? "(none)" : "(type options below)"}</option>}
        {choice !== "" && !choices.includes(choice) && <option value={choice}>{choice} (not an option)</option>}
        {[...new Set(choices)].map((c) => (
          <option key={c} value={c}>{c}</option>
        ))}
      </select>
      <div className="sf-combo-options" role="list" aria-label={`${input.name} options`}>
        {slots.map((text, k) => {
          const last = k === slots.length - 1 && text === "";
          return (
            <div key={k} className="sf-combo-option" role="listitem">
              <span className="sf-combo-option-n">{k + 1}</span>
              <input
                type="text"
                className="nodrag"
                aria-label={`option${k + 1}`}
                placeholder={last ? "new option" : ""}
                value={text}
                onChange={(e) => edit((v) => editOption(v, k, e.target.value))}
              />
              {!last && (
                <button type="button" className="nodrag sf-small" aria-label={`remove option${k + 1}`}
                  title="Remove this option" onClick={() => edit((v) => removeOption(v, k))}>×</button>
              )}
            </div>
          );
        })}
      </div>
    </div>
  );
}
