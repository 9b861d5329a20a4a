/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates U+D800..U+DFFF, nothing above U+10FFFF. */
#ifndef APES_UTF8_H
#define APES_UTF8_H
#include <stddef.h>
#include <stdint.h>

/* Length of the well-formed sequence starting at s[0] (1..4), or 0 if it is not well-formed. */
size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp);
/* 1 if all n bytes are well-formed UTF-8, else 0. */
int utf8_valid(const unsigned char *s, size_t n);
/* Encodes cp (a scalar value) into out (4 bytes), returns the length. */
size_t utf8_encode(uint32_t cp, unsigned char out[4]);

#endif
