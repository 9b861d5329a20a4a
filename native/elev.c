#include "elev.h"

#include <string.h>

#include "json.h"
#include "sha256.h"
#include "utf8.h"

static const char *const value_opts[] = {"--reason", "--as", "--approval", "--duration", "--grant", "--timeout"};
static const char *const flag_opts[] = {"--no-wait", "--json", "--debug", "--no-color"};
#define NVALUE (sizeof value_opts / sizeof value_opts[0])
#define NFLAG (sizeof flag_opts / sizeof flag_opts[0])

int elev_parse(int argc, char *const *argv, struct elevation *e) {
  int seen[NVALUE] = {0};
  int i = 1;
  if (argc < 1 || !argv) return 0;
  if (i < argc && strcmp(argv[i], "run") == 0) i++;
  e->opt_start = i;
  e->run_as = "root"; /* DEFAULT_RUN_AS of protocol/names.ts */
  for (; i < argc; i++) {
    const char *tok = argv[i];
    if (strcmp(tok, "--") == 0) {
      if (i + 1 >= argc) return 0; /* CMD must not be empty */
      e->opt_end = i;
      e->cmd_start = i + 1;
      return 1;
    }
    /* `--name=value` or `--name value` for the value options */
    const char *eq = strncmp(tok, "--", 2) == 0 ? strchr(tok, '=') : NULL;
    size_t namelen = eq ? (size_t)(eq - tok) : strlen(tok);
    int matched = 0;
    for (size_t k = 0; k < NVALUE; k++) {
      if (strlen(value_opts[k]) != namelen || strncmp(tok, value_opts[k], namelen) != 0) continue;
      const char *value;
      if (eq) {
        value = eq + 1;
      } else {
        if (i + 1 >= argc) return 0;
        value = argv[++i];
      }
      if (seen[k]++) return 0; /* given twice: not an elevation */
      if (k == 1) e->run_as = value;
      matched = 1;
      break;
    }
    if (matched) continue;
    for (size_t k = 0; k < NFLAG; k++)
      if (strcmp(tok, flag_opts[k]) == 0) matched = 1;
    if (!matched) return 0;
  }
  return 0; /* no `--` */
}

enum argv_check elev_check_argv(int argc, char *const *argv, const struct elevation *e, int *bad) {
  size_t total = 0;
  if (argc - e->cmd_start > APES_MAX_CMD_ARGS) {
    *bad = e->cmd_start;
    return ARGV_TOO_MANY;
  }
  for (int i = 1; i < argc; i++) {
    size_t len = strlen(argv[i]);
    *bad = i;
    if (len > APES_MAX_ARG_BYTES) return ARGV_ARG_TOO_LONG;
    if (!utf8_valid((const unsigned char *)argv[i], len)) return ARGV_BAD_UTF8;
    if (i >= e->cmd_start) {
      total += len;
      if (total > APES_MAX_CMD_BYTES) return ARGV_CMD_TOO_LONG;
    }
  }
  *bad = 0;
  return ARGV_OK;
}

int cmd_hash(char *const *cmd, size_t n, char out[CMD_HASH_LEN]) {
  static const char hex[] = "0123456789abcdef";
  struct buf b = {0};
  struct sha256 c;
  unsigned char d[32];
  json_argv(&b, cmd, n);
  if (b.err) {
    buf_free(&b);
    return -1;
  }
  sha256_init(&c);
  sha256_update(&c, b.p, b.len);
  sha256_final(&c, d);
  buf_free(&b);
  memcpy(out, "SHA-256:", 8);
  for (int i = 0; i < 32; i++) {
    out[8 + 2 * i] = hex[d[i] >> 4];
    out[9 + 2 * i] = hex[d[i] & 15];
  }
  out[CMD_HASH_LEN - 1] = '\0';
  return 0;
}
