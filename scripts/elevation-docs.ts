// The generated blocks of README.md and docs/elevation.md: the elevation's exit statuses and audit
// reasons, from protocol/elevation.ts. `node scripts/elevation-docs.ts` rewrites them in place;
// test/contract/elevation-reasons.test.ts fails when a document differs from what this produces.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { auditReasons, ELEVATION_EXIT, ELEVATION_EXIT_MEANINGS } from "../protocol/elevation.ts";

export const REPO = join(import.meta.dirname, "..");

/** The documents and the blocks each holds. */
export const GENERATED: Readonly<Record<string, readonly Block[]>> = {
  "README.md": ["exits", "reasons"],
  "docs/elevation.md": ["exits", "reasons"],
};

export type Block = "exits" | "reasons";

const begin = (b: Block) =>
  `<!-- ${b}: generated from protocol/elevation.ts by scripts/elevation-docs.ts -->`;
const end = (b: Block) => `<!-- /${b} -->`;

export function render(block: Block): string {
  if (block === "exits") {
    const statuses = (Object.keys(ELEVATION_EXIT_MEANINGS) as (keyof typeof ELEVATION_EXIT)[]).map(
      (k) => `${ELEVATION_EXIT[k]} ${ELEVATION_EXIT_MEANINGS[k]}`,
    );
    return `The command's own status when it ran; ${statuses.join("; ")}.`;
  }
  const rows = auditReasons().map(
    (r) => `| \`${r.code}\` | ${r.producers.join(", ")} | ${r.exit} | ${r.meaning.replaceAll("|", "\\|")} |`,
  );
  return ["| reason | written by | exit | meaning |", "| --- | --- | --- | --- |", ...rows].join("\n");
}

/** The text between a block's markers in a document, or undefined when the markers are missing. */
export function current(text: string, block: Block): string | undefined {
  const from = text.indexOf(begin(block));
  const to = text.indexOf(end(block));
  if (from === -1 || to < from) return undefined;
  return text.slice(from + begin(block).length, to).trim();
}

function rewrite(text: string, block: Block): string {
  const from = text.indexOf(begin(block));
  const to = text.indexOf(end(block));
  if (from === -1 || to < from) throw new Error(`no ${block} markers`);
  return `${text.slice(0, from)}${begin(block)}\n${render(block)}\n${text.slice(to)}`;
}

if (import.meta.main) {
  for (const [file, blocks] of Object.entries(GENERATED)) {
    const path = join(REPO, file);
    let text = readFileSync(path, "utf8");
    for (const b of blocks) text = rewrite(text, b);
    writeFileSync(path, text);
  }
}
