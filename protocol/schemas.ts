import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

/**
 * JSON Schema validation (draft 2020-12) of what the IdP emits. The project's own schemas are
 * protocol/schemas/*.json, written from docs/protocol.md and protocol/types.ts. An external set
 * (the protocol family's published schemas) can be checked as well: `APES_SCHEMAS_DIR` names its
 * folder; without it only the project's own schemas are used. Used by tests (ajv is a dev tool).
 */

/** The project's own schemas, next to this file. */
export const OWN_SCHEMAS_DIR = join(import.meta.dirname, "schemas");

/** The external conformance set, when `APES_SCHEMAS_DIR` names one. */
export function externalSchemasDir(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const dir = env.APES_SCHEMAS_DIR;
  if (!dir) return undefined;
  const path = resolve(dir);
  if (!existsSync(path)) throw new Error(`APES_SCHEMAS_DIR=${dir}: no such directory`);
  return path;
}

/** Names present in the project's own set; an external set is checked for those it also has. */
export type SchemaName =
  | "authz-jwt-claims"
  | "ddisa-record"
  | "delegated-token-claims"
  | "delegation"
  | "error"
  | "grant-list"
  | "grant-request"
  | "grant"
  | "jwks"
  | "openid-configuration-extensions"
  | "session-token-claims"
  | "sp-token-claims";

export interface SchemaValidator {
  /** The folders the schemas came from, own first. */
  readonly dirs: readonly string[];
  /** The names this validator knows. */
  has(name: SchemaName): boolean;
  validate(name: SchemaName, value: unknown): { valid: boolean; errors: string[] };
  /** Throws with every error listed; handy in tests: `schemas.assert("grant", g)`. */
  assert(name: SchemaName, value: unknown): void;
}

/** One folder of schemas, compiled lazily by name (file name without `.json`). */
function loadDir(dir: string): {
  has(name: string): boolean;
  validate(name: string, value: unknown): string[];
} {
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  (addFormats as unknown as (a: Ajv2020) => void)(ajv);
  const byName = new Map<string, string>();
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".json"))) {
    const schema = JSON.parse(readFileSync(join(dir, file), "utf8"));
    ajv.addSchema(schema);
    byName.set(file.replace(/\.json$/, ""), schema.$id ?? file);
  }
  const compiled = new Map<string, ValidateFunction>();
  return {
    has: (name) => byName.has(name),
    validate(name, value) {
      let fn = compiled.get(name);
      if (!fn) {
        const id = byName.get(name);
        if (!id) throw new Error(`no schema named ${name} in ${dir}`);
        fn = ajv.getSchema(id);
        if (!fn) throw new Error(`schema ${name} (${id}) did not compile`);
        compiled.set(name, fn);
      }
      if (fn(value)) return [];
      return (fn.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message ?? "invalid"}`);
    },
  };
}

/**
 * Fields apes emits beyond the external set, which refuses unknown properties. Two deviations:
 * the AuthZ-JWT's `act` (the requester's kind, "agent" or "human"), which the mission's grant flow
 * requires in every AuthZ-JWT, and a decided grant's `approval_proof` (how the approver proved the
 * decision: "ed25519", "webauthn" or "bearer", docs/signatures.md), which the protocol family's
 * published schemas have no field for. Our own schemas define both; an external set checks the
 * object without them.
 */
export const EXTENSION_FIELDS: Partial<Record<SchemaName, readonly string[]>> = {
  "authz-jwt-claims": ["act"],
  grant: ["approval_proof"],
};

function withoutExtensions(name: SchemaName, value: unknown): unknown {
  const fields = EXTENSION_FIELDS[name];
  if (!fields || !value || typeof value !== "object" || Array.isArray(value)) return value;
  const rest = { ...(value as Record<string, unknown>) };
  for (const f of fields) delete rest[f];
  return rest;
}

/**
 * A validator over one or more folders: a value is valid when every folder that has a schema of
 * that name accepts it (the first folder must have it; every folder but the project's own sees the
 * value without EXTENSION_FIELDS). Default: the project's own schemas, plus the external set when
 * `APES_SCHEMAS_DIR` is set.
 */
export function loadSchemas(dirs: readonly string[] = defaultDirs()): SchemaValidator {
  const sets = dirs.map((dir) => ({ dir, set: loadDir(dir) }));
  const validate = (name: SchemaName, value: unknown) => {
    if (!sets[0]?.set.has(name)) throw new Error(`no schema named ${name} in ${dirs[0]}`);
    const errors = sets.flatMap(({ dir, set }) =>
      set.has(name)
        ? set
            .validate(name, dir === OWN_SCHEMAS_DIR ? value : withoutExtensions(name, value))
            .map((e) => `${e} (${dir})`)
        : [],
    );
    return { valid: errors.length === 0, errors };
  };
  return {
    dirs,
    has: (name) => sets[0]?.set.has(name) ?? false,
    validate,
    assert(name, value) {
      const r = validate(name, value);
      if (!r.valid) throw new Error(`${name} schema: ${r.errors.join("; ")}\n${JSON.stringify(value)}`);
    },
  };
}

function defaultDirs(): string[] {
  const external = externalSchemasDir();
  return external ? [OWN_SCHEMAS_DIR, external] : [OWN_SCHEMAS_DIR];
}
