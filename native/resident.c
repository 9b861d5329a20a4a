#define _GNU_SOURCE
#include "resident.h"

#include "sock.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int resident_answer_split(const char *buf, size_t n, size_t *verdict_len, int *code, size_t *diag_start) {
  const char *nl = memchr(buf, '\n', n);
  if (!nl) return -1;
  size_t v = (size_t)(nl - buf), at = v + 1;
  static const char EXIT[] = "exit ";
  if (n - at < sizeof EXIT - 1 || memcmp(buf + at, EXIT, sizeof EXIT - 1) != 0) return -1;
  at += sizeof EXIT - 1;
  int value = 0, digits = 0;
  while (at < n && buf[at] >= '0' && buf[at] <= '9' && digits < 4) {
    if (digits == 1 && value == 0) return -1; /* a leading zero */
    value = value * 10 + (buf[at++] - '0');
    digits++;
  }
  if (digits == 0 || value > 255 || at >= n || buf[at] != '\n') return -1;
  *verdict_len = v;
  *code = value;
  *diag_start = at + 1;
  return 0;
}

int resident_converse(int fd, const char *policy, size_t policylen, struct conversation *c, long long deadline_ms) {
  char head[32];
  int hn = snprintf(head, sizeof head, "policy %zu\n", policylen);
  if (send_all(fd, head, (size_t)hn, deadline_ms) != 0 || send_all(fd, policy, policylen, deadline_ms) != 0 ||
      send_all(fd, c->req, c->reqlen, deadline_ms) != 0) {
    int timeout = errno == ETIMEDOUT;
    close(fd);
    return timeout ? -2 : -1;
  }
  /* The verdict line, the exit line and the diagnostics in one buffer; past it only counted. */
  size_t max = c->outmax + 16 + MAX_DIAG, got = 0;
  char *buf = malloc(max), scratch[4096];
  if (!buf) {
    close(fd);
    return -1;
  }
  int result = -1;
  for (;;) {
    int w = wait_readable(fd, deadline_ms);
    if (w <= 0) {
      result = w == 0 ? -2 : -1;
      goto out;
    }
    ssize_t r = got < max ? read(fd, buf + got, max - got) : read(fd, scratch, sizeof scratch);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) goto out;
    if (r == 0) break;
    if (got < max) got += (size_t)r;
    else c->dropped += (size_t)r;
  }
  size_t vlen, diag;
  int code;
  if (resident_answer_split(buf, got, &vlen, &code, &diag) != 0 || vlen + 1 > c->outmax) goto out;
  memcpy(c->out, buf, vlen + 1);
  c->outlen = vlen + 1;
  size_t dn = got - diag;
  if (dn > MAX_DIAG) {
    c->dropped += dn - MAX_DIAG;
    dn = MAX_DIAG;
  }
  memcpy(c->diag, buf + diag, dn);
  c->diaglen = dn;
  result = code;
out:
  free(buf);
  close(fd);
  return result;
}
