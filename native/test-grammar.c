/* Test helper (not installed): the shim's elevation grammar, for the differential test against
 * cli/elevation/grammar.ts. Runs the same elev_parse the shim runs on its argv.
 *   test-grammar --batch   stdin: records "<n>\0<arg1>\0...<argn>\0" (argv without argv[0]);
 *                          one output line per record: "no", or "yes OPT_START OPT_END CMD_START
 *                          RUN_AS_HEX" with indexes into the record's argv (argv[0] not counted). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "elev.h"

static void parse_one(char **args, int n) {
  char **argv = calloc((size_t)n + 2, sizeof *argv);
  struct elevation e;
  if (!argv) exit(1);
  argv[0] = "apes";
  memcpy(argv + 1, args, (size_t)n * sizeof *argv);
  if (!elev_parse(n + 1, argv, &e)) {
    puts("no");
  } else {
    printf("yes %d %d %d ", e.opt_start - 1, e.opt_end - 1, e.cmd_start - 1);
    for (const unsigned char *p = (const unsigned char *)e.run_as; *p; p++) printf("%02x", *p);
    putchar('\n');
  }
  free(argv);
}

int main(int argc, char **argv) {
  if (argc != 2 || strcmp(argv[1], "--batch") != 0) {
    fputs("usage: test-grammar --batch\n", stderr);
    return 2;
  }
  size_t cap = 1 << 20, len = 0, got;
  char *in = malloc(cap);
  while (in && (got = fread(in + len, 1, cap - len, stdin)) > 0)
    if ((len += got) == cap) in = realloc(in, cap *= 2);
  if (!in) return 1;
  size_t i = 0;
  while (i < len) {
    int count = atoi(in + i), k = 0;
    i += strlen(in + i) + 1;
    char **args = calloc((size_t)count + 1, sizeof *args);
    if (!args || count < 0) return 1;
    for (; k < count && i < len; k++) {
      args[k] = in + i;
      i += strlen(in + i) + 1;
    }
    if (k != count) return 1;
    parse_one(args, count);
    free(args);
  }
  free(in);
  return 0;
}
