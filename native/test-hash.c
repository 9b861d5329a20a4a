/* Test helper (not installed): the shim's cmd_hash, for the differential test against
 * protocol/cmd-hash.ts. Runs the same code as the shim: elev_check_argv, then cmd_hash.
 *   test-hash ARG...     prints the cmd_hash of [ARG...], or "invalid-utf8" (exit 2)
 *   test-hash --batch    stdin: records "<n>\0<arg1>\0...<argn>\0"; one output line per record */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "elev.h"

static const char *hash_of(char **cmd, int n, char out[CMD_HASH_LEN]) {
  /* elev_check_argv looks at argv[1..]: give it a frame like the shim's `apes -- CMD...` */
  char **argv = calloc((size_t)n + 3, sizeof *argv);
  struct elevation e = {1, 1, 2, "root"};
  int bad;
  if (!argv) return "error";
  argv[0] = "apes";
  argv[1] = "--";
  memcpy(argv + 2, cmd, (size_t)n * sizeof *argv);
  enum argv_check c = elev_check_argv(n + 2, argv, &e, &bad);
  free(argv);
  if (c == ARGV_BAD_UTF8) return "invalid-utf8";
  if (c != ARGV_OK) return "too-long";
  return cmd_hash(cmd, (size_t)n, out) == 0 ? out : "error";
}

int main(int argc, char **argv) {
  char out[CMD_HASH_LEN];
  if (argc == 2 && strcmp(argv[1], "--batch") == 0) {
    size_t cap = 1 << 20, len = 0, n;
    char *in = malloc(cap);
    while (in && (n = fread(in + len, 1, cap - len, stdin)) > 0)
      if ((len += n) == cap) in = realloc(in, cap *= 2);
    if (!in) return 1;
    size_t i = 0;
    while (i < len) {
      int count = atoi(in + i), k = 0;
      i += strlen(in + i) + 1;
      char **cmd = calloc((size_t)count + 1, sizeof *cmd);
      if (!cmd || count <= 0) return 1;
      for (; k < count && i < len; k++) {
        cmd[k] = in + i;
        i += strlen(in + i) + 1;
      }
      if (k != count) return 1;
      puts(hash_of(cmd, count, out));
      free(cmd);
    }
    free(in);
    return 0;
  }
  if (argc < 2) {
    fputs("usage: test-hash ARG... | test-hash --batch\n", stderr);
    return 2;
  }
  const char *h = hash_of(argv + 1, argc - 1, out);
  puts(h);
  return strncmp(h, "SHA-256:", 8) == 0 ? 0 : 2;
}
