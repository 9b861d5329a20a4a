/* libFuzzer harness over everything the shim does with untrusted bytes before it runs anything:
 * the input is split at NUL bytes into an argv (what a caller controls), which goes through the
 * elevation grammar, the argv checks and cmd_hash; every valid element is escaped and parsed back
 * through the verdict parser (must round-trip exactly); and the raw input is fed to the verdict
 * parser (what the verifier's stdout controls). Build and run: `make native-fuzz FUZZ_TIME=20`. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../elev.h"
#include "../json.h"
#include "../utf8.h"

#define MAX_ARGS 64

static void roundtrip(const char *s) {
  struct buf b = {0};
  struct json_kv *kv;
  buf_puts(&b, "{\"k\":");
  json_str(&b, s, strlen(s));
  buf_puts(&b, "}");
  if (b.err) abort();
  int n = json_parse_flat(b.p, b.len, &kv);
  /* valid UTF-8 without NUL must survive escape + parse unchanged */
  if (n != 1 || strcmp(json_get_str(kv, n, "k"), s) != 0) abort();
  json_kv_free(kv, n);
  buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *copy = malloc(size + 1);
  char *argv[MAX_ARGS + 1];
  int argc = 0;
  struct elevation e;
  struct json_kv *kv;
  if (!copy) return 0;
  memcpy(copy, data, size);
  copy[size] = 0;

  int n = json_parse_flat((const char *)data, size, &kv);
  if (n >= 0) {
    /* what the shim reads from a verdict */
    (void)json_get_bool(kv, n, "ok");
    (void)json_get_str(kv, n, "cmd_hash");
    json_kv_free(kv, n);
  }

  argv[argc++] = "apes";
  for (char *p = copy; p <= copy + size && argc < MAX_ARGS; p += strlen(p) + 1) argv[argc++] = p;
  argv[argc] = NULL;
  if (elev_parse(argc, argv, &e)) {
    int bad;
    if (e.cmd_start <= e.opt_end || e.cmd_start >= argc || e.opt_start > e.opt_end || !e.run_as) abort();
    if (elev_check_argv(argc, argv, &e, &bad) == ARGV_OK) {
      char h[CMD_HASH_LEN];
      if (cmd_hash(argv + e.cmd_start, (size_t)(argc - e.cmd_start), h) != 0 || strlen(h) != 72) abort();
    }
  }
  for (int i = 1; i < argc; i++)
    if (utf8_valid((const unsigned char *)argv[i], strlen(argv[i]))) roundtrip(argv[i]);
  free(copy);
  return 0;
}
