/**
 * Node packs that failed to load, as one line for a toast on opening the canvas: their
 * nodes are missing from the palette, and the reason was only in the server's log.
 */

export type PackErrorInfo = { pack: string; message: string; whole: boolean };

const SHOWN = 2;
/** The other packs named at most. */
const NAMED = 8;

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
  // the others by name: the toast is the only place in the canvas that lists them
  const others = [...new Set(errors.slice(SHOWN).map((e) => name(e.pack)))];
  const listed = others.slice(0, NAMED).join(", ") + (others.length > NAMED ? ", …" : "");
  const more = errors.length > SHOWN ? `; ${errors.length - SHOWN} more (${listed})` : "";
  return `Node packs: ${parts.join("; ")}${more}. The server's log has the details.`;
}
