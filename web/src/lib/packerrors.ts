/**
 * Node packs that failed to load, as one line for a toast on opening the canvas: their
 * nodes are missing from the palette, and the reason was only in the server's log.
 */

export type PackErrorInfo = { pack: string; message: string; whole: boolean };

const SHOWN = 2;

/** The toast's text (null: nothing failed). The first line of each message only. */
export function packErrorText(errors: readonly PackErrorInfo[]): string | null {
  if (!errors.length) return null;
  const name = (pack: string) => pack.split(/[\\/]/).filter(Boolean).pop() ?? pack;
  const parts = errors.slice(0, SHOWN).map((e) => {
    // the first line; after an exception's bare name, what follows it
    const lines = e.message.split("\n").map((l) => l.trim()).filter(Boolean);
    let why = lines[0] ?? "";
    if (/^\w+(Error|Exception):?$/.test(why) && lines[1]) why = `${why.replace(/:$/, "")}: ${lines[1]}`;
    return e.whole ? `${name(e.pack)} failed to load (${why})` : `${name(e.pack)} loaded without some nodes (${why})`;
  });
  const more = errors.length > SHOWN ? `; ${errors.length - SHOWN} more` : "";
  return `Node packs: ${parts.join("; ")}${more}. The server's log has the details.`;
}
