/* What the shim decides before any privileged step: is argv an elevation, is it acceptable, and the
 * command's cmd_hash. Pure functions over argv (no I/O), shared with the tests and the fuzzer. */
#ifndef APES_ELEV_H
#define APES_ELEV_H
#include <stddef.h>

#define APES_MAX_CMD_ARGS 4096
#define APES_MAX_ARG_BYTES (32 * 1024)
#define APES_MAX_CMD_BYTES (256 * 1024)

/* apes [run] [ELEVATION-OPTION...] -- CMD [ARG...] */
struct elevation {
  int opt_start, opt_end; /* argv[opt_start..opt_end) are the options exactly as given */
  int cmd_start;          /* CMD is argv[cmd_start..argc), never empty */
  const char *run_as;     /* the --as value, "root" when not given */
};

/* 1 and *e filled when argv is an elevation, else 0. The rules match cli/elevation/grammar.ts:
 * value options (--reason --as --approval --duration --grant --timeout) take the next element
 * whatever it is, or `--opt=value`; each may appear once; flags (--no-wait --json --debug
 * --no-color) any number of times; the first `--` ends the options and must be followed by CMD. */
int elev_parse(int argc, char *const *argv, struct elevation *e);

enum argv_check {
  ARGV_OK = 0,
  ARGV_BAD_UTF8,
  ARGV_TOO_MANY,  /* more than APES_MAX_CMD_ARGS elements in CMD */
  ARGV_ARG_TOO_LONG, /* one element longer than APES_MAX_ARG_BYTES */
  ARGV_CMD_TOO_LONG, /* CMD longer than APES_MAX_CMD_BYTES in total */
};
/* Checks argv[1..argc) (UTF-8, element size) and CMD (count, total size); *bad is the index. */
enum argv_check elev_check_argv(int argc, char *const *argv, const struct elevation *e, int *bad);

/* "SHA-256:" + 64 lowercase hex digits of SHA-256(JSON.stringify(cmd)); out has room for 72 characters and a NUL.
 * Returns 0, or -1 on allocation failure. The caller has checked the UTF-8 (elev_check_argv). */
#define CMD_HASH_LEN 73
int cmd_hash(char *const *cmd, size_t n, char out[CMD_HASH_LEN]);

#endif
