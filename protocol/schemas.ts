import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

/**
 * JSON Schema validation against the protocol contract (../shared/protocol/schemas, draft 2020-12).
 * Used by tests; APES_SCHEMAS_DIR points elsewhere when the schemas live somewhere else.
 */
export function schemasDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.APES_SCHEMAS_DIR) return resolve(env.APES_SCHEMAS_DIR);
  const here = dirname(fileURLToPath(import.meta.url));
  const candidate = resolve(here, "..", "..", "shared", "protocol", "schemas");
  if (!existsSync(candidate))
    throw new Error(`protocol schemas not found at ${candidate}; set APES_SCHEMAS_DIR`);
  return candidate;
}

export type SchemaName =
  | "authz-jwt-claims"
  | "client-metadata"
  | "ddisa-record"
  | "delegation"
  | "error"
  | "grant-request"
  | "grant"
  | "openid-configuration-extensions"
  | "sp-scope-catalog";

export interface SchemaValidator {
  validate(name: SchemaName, value: unknown): { valid: boolean; errors: string[] };
  /** Throws with every error listed; handy in tests: `schemas.assert("grant", g)`. */
  assert(name: SchemaName, value: unknown): void;
}

export function loadSchemas(dir = schemasDir()): SchemaValidator {
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  (addFormats as unknown as (a: Ajv2020) => void)(ajv);
  const byName = new Map<string, string>();
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".json"))) {
    const schema = JSON.parse(readFileSync(join(dir, file), "utf8"));
    ajv.addSchema(schema);
    byName.set(file.replace(/\.json$/, ""), schema.$id ?? file);
  }
  const compiled = new Map<string, ValidateFunction>();
  const get = (name: string): ValidateFunction => {
    let fn = compiled.get(name);
    if (!fn) {
      const id = byName.get(name);
      if (!id) throw new Error(`no schema named ${name} in ${dir}`);
      fn = ajv.getSchema(id);
      if (!fn) throw new Error(`schema ${name} (${id}) did not compile`);
      compiled.set(name, fn);
    }
    return fn;
  };
  const validate = (name: SchemaName, value: unknown) => {
    const fn = get(name);
    const valid = fn(value) as boolean;
    const errors = valid
      ? []
      : (fn.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message ?? "invalid"}`);
    return { valid, errors };
  };
  return {
    validate,
    assert(name, value) {
      const r = validate(name, value);
      if (!r.valid) throw new Error(`${name} schema: ${r.errors.join("; ")}\n${JSON.stringify(value)}`);
    },
  };
}
