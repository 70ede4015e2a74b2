/**
 * The text of a caught value for logs, deny reasons and evidence: an Error's message, anything else as a string.
 * `catch (e)` gives `unknown`, and a thrown string or object must not become "undefined" in an operator's log.
 */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
