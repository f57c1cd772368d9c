/** The "?" dialog: every keyboard shortcut and mouse gesture of the canvas. */

import { useEscape } from "./useEscape";
import { usePanelFocus } from "./useReturnFocus";
import { SHORTCUTS } from "./useShortcuts";

export function ShortcutsHelp({ onClose }: { onClose(): void }) {
  useEscape(onClose);
  const box = usePanelFocus<HTMLElement>(); // closed: the focus goes back to the toolbar's ? button

  return (
    <aside ref={box} tabIndex={-1} className="sf-help nowheel" role="dialog" aria-label="keyboard shortcuts">
      <button type="button" className="sf-help-close" aria-label="close shortcuts" onClick={onClose}>×</button>
      <h2>Keyboard and mouse</h2>
      <table className="sf-keys">
        <tbody>
          {SHORTCUTS.map(([keys, action]) => (
            <tr key={keys}>
              {/* one key per box, so that "A / B" can wrap between them: one long line made the
                  key column take half the panel, the descriptions squeezed beside it */}
              <td>{keys.split(" / ").map((k, i) => <span key={k}>{i > 0 && " / "}<kbd>{k}</kbd></span>)}</td>
              <td>{action}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </aside>
  );
}
