/**
 * A typed name as Save's file can carry it on every system: the characters Windows and the
 * browsers refuse in file names (and control and text-direction ones) become "-", leading
 * and trailing dots and spaces go (a browser renames ".." to "json.json"). Empty: refused.
 */
export function fileSafeName(typed: string): string {
  return typed.replace(/[\\/:*?"<>|\u0000-\u001f\u007f\u200e\u200f\u202a-\u202e\u2066-\u2069]+/g, "-")
    .replace(/^[\s.]+|[\s.]+$/g, "");
}
