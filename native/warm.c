#define _GNU_SOURCE
#include "warm.h"

#include "json.h"
#include "proc.h"
#include "sha256.h"
#include "sock.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

const char *const WARM_ENV[] = {
    "HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
    "NO_COLOR", "TZ", "NODE_OPTIONS", "NODE_EXTRA_CA_CERTS", "NODE_USE_ENV_PROXY", "SSL_CERT_FILE",
    "SSL_CERT_DIR", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", NULL,
};

#define MAX_FRAME (1024 * 1024) /* more than any token, line or progress update the requester writes */

static const char *env_in(char *const *envp, const char *name) {
  size_t n = strlen(name);
  for (char *const *e = envp; e && *e; e++)
    if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
  return NULL;
}

static int by_bytes(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int warm_digest(char *const *envp, const char *exec_id, char out[65]) {
  struct sha256 c;
  static const char unset[] = "\x01unset";
  sha256_init(&c);
  sha256_update(&c, "v1", 3);
  sha256_update(&c, exec_id, strlen(exec_id) + 1);
  for (const char *const *name = WARM_ENV; *name; name++) {
    const char *v = env_in(envp, *name);
    sha256_update(&c, *name, strlen(*name) + 1);
    if (v) sha256_update(&c, v, strlen(v) + 1);
    else sha256_update(&c, unset, sizeof unset);
  }
  size_t count = 0;
  for (char *const *e = envp; e && *e; e++)
    if (strncmp(*e, "APES_", 5) == 0) count++;
  char **apes = calloc(count + 1, sizeof *apes);
  if (!apes) return -1;
  size_t k = 0;
  for (char *const *e = envp; e && *e; e++)
    if (strncmp(*e, "APES_", 5) == 0) apes[k++] = *e;
  qsort(apes, k, sizeof *apes, by_bytes);
  for (size_t i = 0; i < k; i++) sha256_update(&c, apes[i], strlen(apes[i]) + 1);
  free(apes);
  unsigned char d[32];
  sha256_final(&c, d);
  for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
  return 0;
}

/* APES_KEEP_WARM=0 (any duration that is zero: "0", "0s", "0m"...) turns warm requesters off. */
static int warm_off(char *const *envp) {
  const char *v = env_in(envp, "APES_KEEP_WARM");
  if (!v || *v < '0' || *v > '9') return 0;
  for (; *v; v++)
    if (*v >= '1' && *v <= '9') return 0;
  return 1;
}

int warm_socket(char *const *envp, uid_t uid, const char *exec_id, char *dir, size_t dn, char *name, size_t nn) {
  char digest[65];
  struct stat st;
  if (warm_off(envp) || warm_digest(envp, exec_id, digest) != 0) return -1;
  const char *xdg = env_in(envp, "XDG_RUNTIME_DIR");
  int n;
  if (xdg && xdg[0] == '/' && stat(xdg, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == uid)
    n = snprintf(dir, dn, "%s/apes", xdg);
  else
    n = snprintf(dir, dn, "/tmp/apes-%lu", (unsigned long)uid);
  if (n < 0 || (size_t)n >= dn) return -1;
  /* 16 bytes of the digest: a name short enough for sun_path under any sane directory. */
  n = snprintf(name, nn, "requester-%.32s.sock", digest);
  return n < 0 || (size_t)n >= nn ? -1 : 0;
}

int warm_frame_header(const char *line, size_t n, int *fd, long *len) {
  char s[32];
  if (n == 0 || n >= sizeof s) return -1;
  memcpy(s, line, n);
  s[n] = '\0';
  if (strcmp(s, "close 3") == 0) {
    *fd = 3;
    *len = -1;
    return 0;
  }
  int which;
  const char *num;
  if (strncmp(s, "exit ", 5) == 0) {
    which = 0;
    num = s + 5;
  } else if ((s[0] == '1' || s[0] == '2' || s[0] == '3') && s[1] == ' ') {
    which = s[0] - '0';
    num = s + 2;
  } else {
    return -1;
  }
  if (!*num || (num[0] == '0' && num[1]) || strspn(num, "0123456789") != strlen(num) || strlen(num) > 7) return -1;
  long v = strtol(num, NULL, 10);
  if ((which == 0 && v > 255) || v > MAX_FRAME) return -1;
  *fd = which;
  *len = v;
  return 0;
}

/* A small reader over the socket: the frames' headers and bodies. */
struct reader {
  int fd;
  char buf[65536];
  size_t start, end;
  int shut; /* our side is shut: the warm requester was told to stop */
};

/* Ctrl-C (and SIGTERM, SIGHUP) reach this child as they would reach a requester. It does not die of
 * them: it shuts its side of the socket, which the warm requester takes as the requester takes the
 * signal (it revokes the grant it created, says so, and ends with 130), and relays that to the end. */
static volatile sig_atomic_t stop_asked;
static void on_stop(int sig) {
  (void)sig;
  stop_asked = 1;
}

/* The next byte run of up to max bytes into *p (pointing into the buffer): its length, 0 at EOF, -1 on an error. */
static ssize_t more(struct reader *r) {
  if (r->start == r->end) {
    r->start = r->end = 0;
    ssize_t n;
    for (;;) {
      n = read(r->fd, r->buf, sizeof r->buf);
      if (stop_asked && !r->shut) {
        shutdown(r->fd, SHUT_WR);
        r->shut = 1;
      }
      if (!(n < 0 && errno == EINTR)) break;
    }
    if (n <= 0) return n;
    r->end = (size_t)n;
  }
  return (ssize_t)(r->end - r->start);
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int warm_request(const char *dir, const char *name, char *const *rargv) {
  int fd = sock_connect_owned(dir, name, getuid());
  if (fd < 0) return -1;
  if (sock_greeted(fd, now_ms() + GREETING_MS) != 0) { /* busy, or not a warm requester at all */
    close(fd);
    return -1;
  }
  struct buf req = {0};
  size_t argc = 0;
  while (rargv[argc]) argc++;
  buf_puts(&req, "{\"argv\":");
  json_argv(&req, rargv + 1, argc - 1); /* from "__request": rargv[0] is the program's name */
  buf_printf(&req, ",\"tty\":%s}\n", isatty(2) ? "true" : "false");
  if (req.err || send_all(fd, req.p, req.len, now_ms() + 5000) != 0) {
    /* Nothing the warm requester could act on arrived whole: the one-shot requester may run. */
    buf_free(&req);
    close(fd);
    return -1;
  }
  buf_free(&req);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop; /* no SA_RESTART: a blocked read returns, and the socket is shut */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  /* From here on, never a second requester: whatever happens is this one's outcome. */
  struct reader r = {.fd = fd};
  char line[32];
  size_t ln = 0;
  for (;;) {
    ssize_t n = more(&r);
    if (n <= 0) _exit(1); /* gone before its exit line */
    char c = r.buf[r.start++];
    if (c != '\n') {
      if (ln >= sizeof line) _exit(1);
      line[ln++] = c;
      continue;
    }
    int target;
    long len;
    if (warm_frame_header(line, ln, &target, &len) != 0) _exit(1);
    ln = 0;
    if (target == 0) _exit((int)len);
    if (len < 0) { /* close 3: the result is whole, the shim may hand it on */
      close(3);
      continue;
    }
    while (len > 0) {
      n = more(&r);
      if (n <= 0) _exit(1);
      size_t take = (size_t)n < (size_t)len ? (size_t)n : (size_t)len;
      /* A caller's stdout or stderr that fails only loses that output, as the one-shot requester's would. */
      if (write_all(target, r.buf + r.start, take) != 0 && target == 3) _exit(1);
      r.start += take;
      len -= (long)take;
    }
  }
}
