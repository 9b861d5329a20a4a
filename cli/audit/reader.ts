import { type FileHandle, open, stat } from "node:fs/promises";
import { StringDecoder } from "node:string_decoder";
import { CliError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";
import { LineSplitter } from "./log.ts";

/** Reads a growing file from where it left off; notices when the path names another file. */
export class AuditReader {
  private fh: FileHandle | undefined;
  private ino = -1;
  private pos = 0;
  private line = 0;
  private decoder = new StringDecoder("utf8");
  private splitter = new LineSplitter();
  readonly file: string;
  constructor(file: string) {
    this.file = file;
  }

  /** Opens the file at the path (false when there is none yet). */
  async open(): Promise<boolean> {
    await this.close();
    try {
      this.fh = await open(this.file, "r");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw new CliError(`cannot read ${this.file}: ${(e as Error).message}`, { exitCode: ExitCode.CONFIG });
    }
    this.ino = (await this.fh.stat()).ino;
    this.pos = 0;
    this.line = 0;
    this.splitter = new LineSplitter();
    this.decoder = new StringDecoder("utf8");
    return true;
  }

  async readNew(): Promise<{ number: number; text: string | undefined }[]> {
    if (!this.fh) return [];
    const size = (await this.fh.stat()).size;
    // Truncated in place (copytruncate): start over.
    if (size < this.pos) {
      this.pos = 0;
      this.line = 0;
      this.splitter.reset();
    }
    const out: { number: number; text: string | undefined }[] = [];
    const buf = Buffer.alloc(64 * 1024);
    for (;;) {
      const { bytesRead } = await this.fh.read(buf, 0, buf.length, this.pos);
      if (bytesRead === 0) break;
      this.pos += bytesRead;
      for (const text of this.splitter.push(this.decoder.write(buf.subarray(0, bytesRead))))
        out.push({ number: ++this.line, text });
    }
    return out;
  }

  /** True when the path is now another file, or gone. */
  async replaced(): Promise<boolean> {
    if (!this.fh) return true;
    try {
      return (await stat(this.file)).ino !== this.ino;
    } catch {
      return true;
    }
  }

  async close(): Promise<void> {
    await this.fh?.close();
    this.fh = undefined;
  }
}
