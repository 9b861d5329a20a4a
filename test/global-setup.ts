import { existsSync } from "node:fs";
import { join } from "node:path";

// Integration and e2e tests drive the built binary; fail early with the fix rather than 100 times.
export default function setup(): void {
  const bin = join(import.meta.dirname, "..", "dist", "apes");
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`make build\` before the tests`);
}
