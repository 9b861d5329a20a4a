#define _GNU_SOURCE
#include "json.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

static int buf_grow(struct buf *b, size_t extra) {
  if (b->err) return -1;
  if (extra > SIZE_MAX / 2 - b->len) goto fail;
  if (b->len + extra + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) goto fail;
  b->p = p;
  b->cap = cap;
  return 0;
fail:
  b->err = 1;
  return -1;
}

void buf_put(struct buf *b, const void *s, size_t n) {
  if (buf_grow(b, n) != 0) return;
  if (n) memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

void buf_puts(struct buf *b, const char *s) { buf_put(b, s, strlen(s)); }

void buf_putc(struct buf *b, char c) { buf_put(b, &c, 1); }

void buf_printf(struct buf *b, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp) { /* only used for numbers and short fixed text */
    b->err = 1;
    return;
  }
  buf_put(b, tmp, (size_t)n);
}

void buf_free(struct buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

void json_str(struct buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, run = 0; /* copy runs of plain bytes in one go */
  buf_putc(b, '"');
  while (i < n) {
    unsigned char c = u[i];
    const char *esc = NULL;
    char ubuf[7];
    size_t k = 1;
    uint32_t cp;
    if (c == '"') esc = "\\\"";
    else if (c == '\\') esc = "\\\\";
    else if (c == '\b') esc = "\\b";
    else if (c == '\f') esc = "\\f";
    else if (c == '\n') esc = "\\n";
    else if (c == '\r') esc = "\\r";
    else if (c == '\t') esc = "\\t";
    else if (c < 0x20) {
      memcpy(ubuf, "\\u00", 4);
      ubuf[4] = hex[c >> 4];
      ubuf[5] = hex[c & 15];
      ubuf[6] = '\0';
      esc = ubuf;
    } else if (c >= 0x80) {
      k = utf8_seq(u + i, n - i, &cp);
      if (k == 0) {
        esc = "\\ufffd";
        k = 1;
      }
    }
    if (esc) {
      buf_put(b, s + i - run, run);
      run = 0;
      buf_puts(b, esc);
    } else {
      run += k;
    }
    i += k;
  }
  buf_put(b, s + i - run, run);
  buf_putc(b, '"');
}

void json_argv(struct buf *b, char *const *argv, size_t n) {
  buf_putc(b, '[');
  for (size_t i = 0; i < n; i++) {
    if (i) buf_putc(b, ',');
    json_str(b, argv[i], strlen(argv[i]));
  }
  buf_putc(b, ']');
}

/* ---- strict flat-object parser ---- */

struct parser {
  const unsigned char *s;
  size_t n, i;
};

static void skip_ws(struct parser *p) {
  while (p->i < p->n &&
         (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
    p->i++;
}

static int hex4(struct parser *p, uint32_t *v) {
  if (p->n - p->i < 4) return -1;
  *v = 0;
  for (int k = 0; k < 4; k++) {
    unsigned char c = p->s[p->i++];
    uint32_t d;
    if (c >= '0' && c <= '9') d = (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f') d = (uint32_t)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') d = (uint32_t)(c - 'A' + 10);
    else return -1;
    *v = *v << 4 | d;
  }
  return 0;
}

/* Parses a string literal at p->i into a malloc'd NUL-terminated string. */
static char *parse_string(struct parser *p) {
  struct buf out = {0};
  if (p->i >= p->n || p->s[p->i] != '"') return NULL;
  p->i++;
  for (;;) {
    if (p->i >= p->n) goto fail;
    unsigned char c = p->s[p->i];
    if (c == '"') {
      p->i++;
      break;
    }
    if (c < 0x20) goto fail;
    if (c != '\\') {
      buf_putc(&out, (char)c); /* UTF-8 validity of the whole input is checked up front */
      p->i++;
      continue;
    }
    if (++p->i >= p->n) goto fail;
    c = p->s[p->i++];
    switch (c) {
    case '"': buf_putc(&out, '"'); break;
    case '\\': buf_putc(&out, '\\'); break;
    case '/': buf_putc(&out, '/'); break;
    case 'b': buf_putc(&out, '\b'); break;
    case 'f': buf_putc(&out, '\f'); break;
    case 'n': buf_putc(&out, '\n'); break;
    case 'r': buf_putc(&out, '\r'); break;
    case 't': buf_putc(&out, '\t'); break;
    case 'u': {
      uint32_t cp, lo;
      unsigned char enc[4];
      if (hex4(p, &cp) != 0) goto fail;
      if (cp >= 0xDC00 && cp <= 0xDFFF) goto fail; /* lone low surrogate */
      if (cp >= 0xD800 && cp <= 0xDBFF) {          /* must be followed by \uDC00..\uDFFF */
        if (p->n - p->i < 2 || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u') goto fail;
        p->i += 2;
        if (hex4(p, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF) goto fail;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      }
      if (cp == 0) goto fail; /* would truncate a C string */
      buf_put(&out, enc, utf8_encode(cp, enc));
      break;
    }
    default: goto fail;
    }
  }
  if (out.err) goto fail;
  if (!out.p) buf_put(&out, "", 0);
  if (out.err) goto fail;
  return out.p;
fail:
  buf_free(&out);
  return NULL;
}

void json_kv_free(struct json_kv *kv, int count) {
  if (!kv) return;
  for (int i = 0; i < count; i++) {
    free(kv[i].key);
    free(kv[i].str);
  }
  free(kv);
}

int json_parse_flat(const char *s, size_t n, struct json_kv **out) {
  struct parser p = {(const unsigned char *)s, n, 0};
  struct json_kv *kv;
  int count = 0;
  *out = NULL;
  if (!utf8_valid(p.s, n)) return -1;
  kv = calloc(JSON_MAX_KEYS, sizeof *kv);
  if (!kv) return -1;
  skip_ws(&p);
  if (p.i >= p.n || p.s[p.i++] != '{') goto fail;
  skip_ws(&p);
  if (p.i < p.n && p.s[p.i] == '}') {
    p.i++;
    goto done;
  }
  for (;;) {
    if (count == JSON_MAX_KEYS) goto fail;
    skip_ws(&p);
    char *key = parse_string(&p);
    if (!key) goto fail;
    for (int j = 0; j < count; j++)
      if (strcmp(kv[j].key, key) == 0) {
        free(key);
        goto fail;
      }
    kv[count].key = key;
    count++; /* counted now so json_kv_free releases it on failure */
    skip_ws(&p);
    if (p.i >= p.n || p.s[p.i++] != ':') goto fail;
    skip_ws(&p);
    if (p.i < p.n && p.s[p.i] == '"') {
      kv[count - 1].str = parse_string(&p);
      if (!kv[count - 1].str) goto fail;
    } else if (p.n - p.i >= 4 && memcmp(p.s + p.i, "true", 4) == 0) {
      kv[count - 1].boolean = 1;
      p.i += 4;
    } else if (p.n - p.i >= 5 && memcmp(p.s + p.i, "false", 5) == 0) {
      kv[count - 1].boolean = 0;
      p.i += 5;
    } else {
      goto fail;
    }
    skip_ws(&p);
    if (p.i >= p.n) goto fail;
    if (p.s[p.i] == ',') {
      p.i++;
      continue;
    }
    if (p.s[p.i] == '}') {
      p.i++;
      break;
    }
    goto fail;
  }
done:
  skip_ws(&p);
  if (p.i != p.n) goto fail;
  *out = kv;
  return count;
fail:
  json_kv_free(kv, count);
  return -1;
}

const char *json_get_str(const struct json_kv *kv, int count, const char *key) {
  for (int i = 0; i < count; i++)
    if (strcmp(kv[i].key, key) == 0) return kv[i].str;
  return NULL;
}

int json_get_bool(const struct json_kv *kv, int count, const char *key) {
  for (int i = 0; i < count; i++)
    if (strcmp(kv[i].key, key) == 0) return kv[i].str ? -1 : kv[i].boolean;
  return -1;
}
