/** What a failed request says to the user: the server's error body in one line, or "cannot reach the server". */

/**
 * A server error's `message` and `details` in one line, without saying the same thing
 * twice: the details often repeat the message ("[no_output_node] prompt: the prompt has
 * no output node…"), and then the longer (more specific) one is shown alone.
 */
export function joinErrorText(message?: string, details?: string): string | undefined {
  const m = message?.trim() ?? "";
  const d = details?.trim() ?? "";
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
