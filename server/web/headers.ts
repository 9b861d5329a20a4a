/**
 * Headers for every HTML page: a CSP that allows scripts, styles and images only from our own
 * origin (no inline script or style, no plugins, no framing, forms post only to us), and no caching
 * of pages that may show a person's data. JSON answers get nosniff and no-store in server/http.ts.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join("; ");

export const HTML_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy": CONTENT_SECURITY_POLICY,
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  // Not no-referrer: under it browsers send `Origin: null` on our own form posts, which the CSRF
  // check (csrf.ts) must then refuse. same-origin sends nothing to any other site.
  "referrer-policy": "same-origin",
  "cross-origin-opener-policy": "same-origin",
  "cache-control": "no-store",
};
