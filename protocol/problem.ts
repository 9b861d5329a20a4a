/** RFC 7807 problem details (schema error.json), shared by the IdP and its clients. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail?: string;
  instance?: string;
  [extension: string]: unknown;
}

export const PROBLEM_BASE = "https://openape.org/errors/";
export const PROBLEM_CONTENT_TYPE = "application/problem+json";

/** The problem types apes emits, with their HTTP status and title: one place, one serializer. */
export const PROBLEM_TYPES = {
  invalid_request: { status: 400, title: "Invalid request" },
  invalid_json: { status: 400, title: "Malformed JSON body" },
  unsupported_media_type: { status: 415, title: "Unsupported media type" },
  unauthorized: { status: 401, title: "Authentication required" },
  invalid_token: { status: 401, title: "Invalid token" },
  forbidden: { status: 403, title: "Not permitted" },
  proof_required: { status: 403, title: "Approval proof required" },
  invalid_proof: { status: 403, title: "Invalid approval proof" },
  not_found: { status: 404, title: "Not found" },
  method_not_allowed: { status: 405, title: "Method not allowed" },
  conflict: { status: 409, title: "Conflict" },
  invalid_state: { status: 409, title: "Invalid grant state" },
  length_required: { status: 411, title: "Length required" },
  payload_too_large: { status: 413, title: "Payload too large" },
  rate_limited: { status: 429, title: "Too many requests" },
  internal: { status: 500, title: "Internal server error" },
  unavailable: { status: 503, title: "Service unavailable" },
} as const satisfies Record<string, { status: number; title: string }>;

export type ProblemCode = keyof typeof PROBLEM_TYPES;

/** An error carrying a problem; thrown by server code, serialized once at the edge. */
export class ProblemError extends Error {
  readonly code: ProblemCode;
  readonly status: number;
  readonly extensions: Record<string, unknown>;
  constructor(code: ProblemCode, detail?: string, extensions: Record<string, unknown> = {}) {
    super(detail ?? PROBLEM_TYPES[code].title);
    this.name = "ProblemError";
    this.code = code;
    this.status = PROBLEM_TYPES[code].status;
    this.extensions = extensions;
  }
  toProblem(instance?: string): Problem {
    const t = PROBLEM_TYPES[this.code];
    const p: Problem = {
      type: PROBLEM_BASE + this.code,
      title: t.title,
      status: t.status,
      detail: this.message,
    };
    if (instance) p.instance = instance;
    return { ...this.extensions, ...p };
  }
}

/** Best-effort parse of a problem body from any IdP: tolerates OAuth `{error, error_description}` too. */
export function describeErrorBody(body: unknown): string | undefined {
  if (!body || typeof body !== "object") return undefined;
  const b = body as Record<string, unknown>;
  if (typeof b.detail === "string" && b.detail) return b.detail;
  if (typeof b.error_description === "string" && b.error_description) return b.error_description;
  if (typeof b.title === "string" && b.title) return b.title;
  if (typeof b.error === "string" && b.error) return b.error;
  if (typeof b.message === "string" && b.message) return b.message;
  return undefined;
}
