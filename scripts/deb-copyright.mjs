// The bundled packages' part of the Debian copyright file (DEP-5), printed on stdout for
// scripts/deb.sh: one Files paragraph per package the executable carries, read from
// dist/bundled-packages.json (written by scripts/build.mjs from esbuild's metafile, so it lists what
// was actually bundled), with the package's own license text. A package that ships no license file
// gets its license's standard text from packaging/debian/licenses/ (a stand-alone License paragraph);
// a license not mapped below, or one without a text either way, fails the build rather than ship
// an incomplete copyright file.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
/** SPDX (package.json) -> DEP-5 short name. */
const DEP5 = {
  MIT: "Expat",
  "MIT-0": "MIT-0",
  ISC: "ISC",
  "0BSD": "0BSD",
  "BSD-2-Clause": "BSD-2-clause",
  "BSD-3-Clause": "BSD-3-clause",
  "Apache-2.0": "Apache-2.0",
  "MPL-2.0": "MPL-2.0",
};

/** A text as a DEP-5 paragraph body: every line indented, blank lines as " .". */
const body = (text) =>
  text
    .replace(/\r\n?/g, "\n")
    .replace(/\s+$/, "")
    .split("\n")
    .map((l) => (l.trim() === "" ? " ." : ` ${l.replace(/\s+$/, "").replace(/\t/g, "        ")}`))
    .join("\n");

const packages = JSON.parse(readFileSync(join(root, "dist", "bundled-packages.json"), "utf8"));
const out = [];
const standalone = new Set();
for (const p of packages) {
  const license = DEP5[p.license];
  if (!license) throw new Error(`deb-copyright: ${p.name}: license ${p.license} has no DEP-5 name here`);
  const text = p.licenseFile ? readFileSync(join(root, p.licenseFile), "utf8") : undefined;
  const holders = text
    ?.split("\n")
    .map((l) => l.trim())
    .filter((l) => /^(\(c\)|copyright\b)/i.test(l) && !/^copyright (notice|and license|holders?)\b/i.test(l))
    .map((l) => l.replace(/^copyright\s*/i, "").replace(/\s+/g, " "));
  const copyright = holders?.length ? holders.join("\n ") : `the authors of ${p.name}`;
  out.push(
    `Files: ${p.dir}/*\nComment: ${p.name} ${p.version}\nCopyright: ${copyright}\nLicense: ${license}`,
  );
  if (text) out[out.length - 1] += `\n${body(text)}`;
  else standalone.add(license);
}
for (const license of [...standalone].sort()) {
  let text;
  try {
    text = readFileSync(join(root, "packaging", "debian", "licenses", license), "utf8");
  } catch {
    throw new Error(`deb-copyright: no text for ${license}: add packaging/debian/licenses/${license}`);
  }
  out.push(`License: ${license}\n${body(text)}`);
}
process.stdout.write(`${out.join("\n\n")}\n`);
