#include "utf8.h"

size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp) {
  uint32_t c;
  size_t len;
  uint32_t min;
  if (n == 0) return 0;
  if (s[0] < 0x80) {
    *cp = s[0];
    return 1;
  }
  if (s[0] >= 0xC2 && s[0] <= 0xDF) len = 2, c = s[0] & 0x1Fu, min = 0x80;
  else if (s[0] >= 0xE0 && s[0] <= 0xEF) len = 3, c = s[0] & 0x0Fu, min = 0x800;
  else if (s[0] >= 0xF0 && s[0] <= 0xF4) len = 4, c = s[0] & 0x07u, min = 0x10000;
  else return 0; /* continuation byte, C0/C1 (always overlong), F5..FF */
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    c = (c << 6) | (s[i] & 0x3Fu);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  *cp = c;
  return len;
}

int utf8_valid(const unsigned char *s, size_t n) {
  uint32_t cp;
  size_t i = 0;
  while (i < n) {
    if (s[i] < 0x80) { /* fast path for ASCII */
      i++;
      continue;
    }
    size_t k = utf8_seq(s + i, n - i, &cp);
    if (k == 0) return 0;
    i += k;
  }
  return 1;
}

size_t utf8_encode(uint32_t cp, unsigned char out[4]) {
  if (cp < 0x80) {
    out[0] = (unsigned char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (unsigned char)(0xC0 | (cp >> 6));
    out[1] = (unsigned char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (unsigned char)(0xE0 | (cp >> 12));
    out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (unsigned char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (unsigned char)(0xF0 | (cp >> 18));
  out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
  out[3] = (unsigned char)(0x80 | (cp & 0x3F));
  return 4;
}
