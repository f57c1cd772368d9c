/** What a failed request says to the user: the server's error body in one line, or "cannot reach the server". */

/**
 * A validation issue's line as the server writes it, "[kind] where: message" (where is
 * "prompt" or "node 5"): the kind is the server's internal code, and "prompt" says nothing.
 */
const ISSUE_LINE = /^\[[\w.-]+\]\s+(?:prompt:\s*)?/;

/** ComfyUI's generic rejection whose details (one issue a line) say the specific thing. */
const GENERIC = new Set(["Prompt has no outputs"]);

/**
 * Details made of such lines, in the user's words: "node 5: got -1; the prompt has no
 * output node…" without the codes; null when the details are not issue lines.
 */
export function plainIssues(details: string): string | null {
  const lines = details.split("\n").map((l) => l.trim()).filter(Boolean);
  if (!lines.length || !ISSUE_LINE.test(lines[0])) return null;
  return lines.map((l) => l.replace(ISSUE_LINE, "")).join("; ");
}

/**
 * A server error's `message` and `details` in one line, without saying the same thing
 * twice: the details often repeat the message, and then the longer (more specific) one is
 * shown alone. Details that list validation issues are the specific words for ComfyUI's
 * generic message ("Prompt has no outputs"), so they are shown alone, without their codes.
 */
export function joinErrorText(message?: string, details?: string): string | undefined {
  const m = message?.trim() ?? "";
  const d = details?.trim() ?? "";
  const issues = d ? plainIssues(d) : null;
  if (issues) return issues;
  if (d && GENERIC.has(m)) return d.split("\n").map((l) => l.trim()).filter(Boolean).join("; ");
  if (!m || !d) return m || d || undefined;
  if (d.includes(m)) return d;
  if (m.includes(d)) return m;
  return `${m}: ${d}`;
}

/** The text of an error response's body (ComfyUI's `{error: {message, details}}`, a string, ...). */
export function errorMessage(body: unknown): string | undefined {
  if (typeof body === "string") return body || undefined;
  if (body && typeof body === "object") {
    const e = (body as { error?: unknown }).error;
    if (typeof e === "string") return e;
    if (e && typeof e === "object") {
      const { message, details } = e as { message?: unknown; details?: unknown };
      return joinErrorText(typeof message === "string" ? message : undefined,
        typeof details === "string" ? details : undefined);
    }
  }
  return undefined;
}

/**
 * Whether a request failed without an answer from the server (it is down, or the network):
 * fetch rejects with a TypeError then ("Failed to fetch" in Chromium, "NetworkError when
 * attempting to fetch resource." in Firefox, "Load failed" in Safari), not with an HTTP status.
 */
export function isNetworkError(e: unknown): boolean {
  return e instanceof TypeError && /fetch|network|load failed/i.test(e.message);
}

/** "Cannot reach the server (Failed to fetch)". */
export function unreachableText(e: unknown): string {
  const why = e instanceof Error && e.message ? ` (${e.message})` : "";
  return `Cannot reach the server${why}`;
}
