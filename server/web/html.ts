import { visible } from "../../protocol/display.ts";
import { Bytes, type Reply } from "../http.ts";
import { HTML_HEADERS } from "./headers.ts";

/**
 * HTML built only through the `html` tag: every interpolated value is escaped unless it is itself
 * Html (made by the tag), so markup can come only from the template literals in our source.
 */
export class Html {
  readonly text: string;
  constructor(text: string) {
    this.text = text;
  }
}

const ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
  "`": "&#96;",
};

/** Text as it reads in an element or a quoted attribute value. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"'`]/g, (c) => ESCAPES[c]!);
}

type Value = Html | string | number | readonly Value[] | null | undefined | false;

function render(v: Value): string {
  if (v instanceof Html) return v.text;
  if (Array.isArray(v)) return v.map(render).join("");
  if (v === null || v === undefined || v === false) return "";
  return escapeHtml(String(v));
}

/** The template tag: `html\`<p>${name}</p>\`` escapes `name`; arrays are joined, nullish values vanish. */
export function html(strings: TemplateStringsArray, ...values: Value[]): Html {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += render(values[i]!) + strings[i + 1]!;
  return new Html(out);
}

/**
 * Text someone else chose (a command line, an agent's name), as a person must read it: control and
 * invisible characters shown as escapes (protocol/display.ts), cut at `max`, then HTML-escaped.
 */
export function untrusted(text: string, max = 200): Html {
  return new Html(escapeHtml(visible(text, { max })));
}

/** An HTML page as the answer, with the headers every page gets (headers.ts). */
export function htmlReply(status: number, page: Html, headers: Record<string, string> = {}): Reply {
  return {
    status,
    body: new Bytes("text/html; charset=utf-8", page.text),
    headers: { ...HTML_HEADERS, ...headers },
  };
}
