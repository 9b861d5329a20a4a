/* The little JSON the shim needs: a growable buffer, a string escaper that matches JavaScript's
 * JSON.stringify byte for byte (the cmd_hash depends on it), and a strict parser for the verifier's
 * verdict, a flat object whose values are strings or booleans. */
#ifndef APES_JSON_H
#define APES_JSON_H
#include <stddef.h>

struct buf {
  char *p;
  size_t len, cap;
  int err; /* set on allocation failure; later writes are ignored, check once at the end */
};

void buf_put(struct buf *b, const void *s, size_t n);
void buf_puts(struct buf *b, const char *s);
void buf_putc(struct buf *b, char c);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_free(struct buf *b);

/* Appends s as a JSON string literal ("..."), escaped exactly like JSON.stringify: \" \\ \b \f \n
 * \r \t, other bytes below 0x20 as \u00xx (lowercase hex), everything else literal. Bytes that are
 * not well-formed UTF-8 become \ufffd (the shim rejects such argv before hashing, so this only
 * keeps audit lines valid JSON when a passwd entry or similar is odd). */
void json_str(struct buf *b, const char *s, size_t n);
/* Appends ["a","b",...] with no spaces. */
void json_argv(struct buf *b, char *const *argv, size_t n);

#define JSON_MAX_KEYS 32

struct json_kv {
  char *key;
  char *str;  /* NUL-terminated decoded string value, or NULL for a boolean */
  int boolean; /* the value when str == NULL */
};

/* Parses one flat JSON object ({"k":"v","b":true}) with optional surrounding whitespace. Rejects
 * anything else: nesting, numbers, null, duplicate keys, invalid UTF-8, bad escapes, lone
 * surrogates, \u0000, raw control characters, trailing bytes, more than JSON_MAX_KEYS keys.
 * Returns the number of pairs (>= 0) with *out allocated (free with json_kv_free), or -1. */
int json_parse_flat(const char *s, size_t n, struct json_kv **out);
void json_kv_free(struct json_kv *kv, int count);
/* The string value of key, or NULL when absent or not a string. */
const char *json_get_str(const struct json_kv *kv, int count, const char *key);
/* 1 true, 0 false, -1 absent or not a boolean. */
int json_get_bool(const struct json_kv *kv, int count, const char *key);

#endif
