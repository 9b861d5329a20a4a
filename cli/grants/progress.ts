import { formatElapsed } from "../../protocol/duration.ts";
import type { Context } from "../context.ts";

/**
 * A one-line progress indicator on stderr for anyone who waits for a human: a spinner with the
 * elapsed time, redrawn in place on a TTY; on a pipe or file, one plain line when it starts and
 * nothing more (logs stay readable).
 */

export interface Progress {
  /** Change the text after the spinner (TTY) — non-TTY output ignores updates. */
  update(text: string): void;
  /** Clear the line (TTY) and optionally print a final line. */
  stop(finalLine?: string): void;
}

const FRAMES = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

// One implementation, shared with client/wait.ts's timeout message.
export { formatElapsed };

export function startProgress(ctx: Context, text: string, options: { intervalMs?: number } = {}): Progress {
  const out = ctx.io.stderr;
  const started = Date.now();
  if (!out.isTTY) {
    out.write(`${text}\n`);
    return {
      update() {},
      stop(finalLine) {
        if (finalLine) out.write(`${finalLine}\n`);
      },
    };
  }
  let frame = 0;
  let current = text;
  const draw = () => {
    const f = FRAMES[frame++ % FRAMES.length];
    out.write(`\r\u001b[2K${f} ${current} (${formatElapsed(Date.now() - started)})`);
  };
  draw();
  const timer = setInterval(draw, options.intervalMs ?? 100);
  // Never keep the process alive just to animate.
  timer.unref?.();
  let stopped = false;
  return {
    update(t) {
      current = t;
    },
    stop(finalLine) {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      out.write("\r\u001b[2K");
      if (finalLine) out.write(`${finalLine}\n`);
    },
  };
}
