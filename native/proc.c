#define _GNU_SOURCE
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int stdio_normalise(void) {
  for (int fd = 0; fd <= 2; fd++) {
    int want = fd == 0 ? O_RDONLY : O_WRONLY, flags = fcntl(fd, F_GETFL);
    if (flags == -1 && errno != EBADF) return -1;
    if (flags != -1 && ((flags & O_ACCMODE) == want || (flags & O_ACCMODE) == O_RDWR)) continue;
    /* Lower fds are fine by now, so a closed fd is the lowest free one and open() returns it. */
    int null = open("/dev/null", want | O_NOCTTY);
    if (null < 0) return -1;
    if (null != fd && (dup2(null, fd) != fd || close(null) != 0)) return -1;
  }
  return 0;
}

int die_with_parent(pid_t parent) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) return -1;
  return getppid() == parent ? 0 : -1; /* it died before the setting took effect */
}

long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* Reads what fd holds now into buf[*len..max); with dropped, bytes beyond max are counted there
 * and discarded, without it reading stops at max. 1 while fd stays open, 0 at EOF, an error or
 * (without dropped) a full buffer. */
static int drain(int fd, char *buf, size_t max, size_t *len, size_t *dropped) {
  char scratch[4096];
  for (;;) {
    int full = *len >= max;
    if (full && !dropped) return 0;
    ssize_t n = full ? read(fd, scratch, sizeof scratch) : read(fd, buf + *len, max - *len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return 1;
    if (n <= 0) return 0;
    if (full) *dropped += (size_t)n;
    else *len += (size_t)n;
  }
}

static int end_conversation(pid_t pid, struct conversation *c, int *pfd, int result) {
  int st;
  close_fd(pfd);
  close_fd(&c->in_fd);
  close_fd(&c->out_fd);
  close_fd(&c->err_fd);
  kill(-pid, SIGKILL); /* its process group: the verifier leads a session of its own */
  kill(pid, SIGKILL);  /* in case it had not got that far */
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return result;
}

int converse(pid_t pid, struct conversation *c, long long deadline) {
  size_t off = 0;
  int st = 0, exited = 0;
  /* Readable once the child has exited: its exit is seen at once, not at the next look (a verdict
   * is acted on only after the exit, so every ms here is on the elevation's path). Without pidfds
   * (before Linux 5.3) the exit is looked for every 50 ms. */
  int pfd = pidfd_open(pid, 0);
  if (fcntl(c->in_fd, F_SETFL, O_NONBLOCK) != 0 || fcntl(c->out_fd, F_SETFL, O_NONBLOCK) != 0 ||
      fcntl(c->err_fd, F_SETFL, O_NONBLOCK) != 0)
    return end_conversation(pid, c, &pfd, -1);
  for (;;) {
    int pipes_open = c->out_fd >= 0 || c->err_fd >= 0;
    if (!pipes_open && !exited) {
      pid_t w = waitpid(pid, &st, WNOHANG);
      if (w == pid) exited = 1;
      else if (w < 0 && errno != EINTR) return end_conversation(pid, c, &pfd, -1);
    }
    if (exited && !pipes_open) break;
    /* Past the deadline, what is already there is still read (a shim stopped with Ctrl-Z meanwhile
     * must not throw away a verdict that came in time), but for a second at most. */
    long long left = deadline - now_ms();
    if (left <= -1000) return end_conversation(pid, c, &pfd, -2);
    struct pollfd pf[4];
    int n = 0, io = -1, oo = -1, eo = -1;
    if (c->out_fd >= 0) oo = n, pf[n++] = (struct pollfd){c->out_fd, POLLIN, 0};
    if (c->err_fd >= 0) eo = n, pf[n++] = (struct pollfd){c->err_fd, POLLIN, 0};
    if (c->in_fd >= 0) io = n, pf[n++] = (struct pollfd){c->in_fd, POLLOUT, 0};
    if (pfd >= 0 && !pipes_open) pf[n++] = (struct pollfd){pfd, POLLIN, 0};
    /* With both pipes at EOF only the exit is left to see: the pidfd says it, else look every 50 ms. */
    int wait_ms = (int)(left <= 0 ? 0 : pipes_open || pfd >= 0 ? left : left < 50 ? left : 50);
    int ready = poll(pf, (nfds_t)n, wait_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return end_conversation(pid, c, &pfd, -1);
    }
    if (ready == 0 && left <= 0) return end_conversation(pid, c, &pfd, -2);
    if (io >= 0 && pf[io].revents) {
      ssize_t w = 0;
      int gone = !(pf[io].revents & POLLOUT); /* POLLERR/POLLHUP: the child closed its stdin */
      if (!gone && (w = write(c->in_fd, c->req + off, c->reqlen - off)) > 0) off += (size_t)w;
      if (gone || (w < 0 && errno != EINTR && errno != EAGAIN) || off == c->reqlen) close_fd(&c->in_fd);
    }
    if (oo >= 0 && pf[oo].revents && !drain(c->out_fd, c->out, c->outmax, &c->outlen, NULL)) close_fd(&c->out_fd);
    if (eo >= 0 && pf[eo].revents && !drain(c->err_fd, c->diag, MAX_DIAG, &c->diaglen, &c->dropped))
      close_fd(&c->err_fd);
  }
  close_fd(&c->in_fd);
  close_fd(&pfd);
  return st;
}

void forward_diag(const char *diag, size_t len, size_t dropped) {
  static char text[MAX_DIAG * 4 + 128];
  size_t n = 0;
  for (size_t i = 0; i < len && i < MAX_DIAG; i++) {
    unsigned char ch = (unsigned char)diag[i];
    if (ch == '\n' || (ch >= 0x20 && ch < 0x7f)) text[n++] = (char)ch;
    else n += (size_t)snprintf(text + n, sizeof text - n, "\\x%02x", ch);
  }
  if (n > 0 && text[n - 1] != '\n') text[n++] = '\n';
  if (dropped)
    n += (size_t)snprintf(text + n, sizeof text - n, "apes: (%zu more bytes from the verifier dropped)\n", dropped);
  if (n > sizeof text - 1) n = sizeof text - 1;
  /* The caller's stderr may be a full pipe nobody reads, or a file past its RLIMIT_FSIZE. */
  struct sigaction ignore, saved;
  memset(&ignore, 0, sizeof ignore);
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  sigaction(SIGXFSZ, &ignore, &saved);
  for (size_t off = 0; off < n;) {
    struct pollfd pf = {2, POLLOUT, 0};
    if (poll(&pf, 1, 1000) <= 0 || !(pf.revents & POLLOUT)) break;
    size_t chunk = n - off < PIPE_BUF ? n - off : PIPE_BUF; /* POLLOUT promises room for PIPE_BUF */
    ssize_t w = write(2, text + off, chunk);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    off += (size_t)w;
  }
  sigaction(SIGXFSZ, &saved, NULL);
}

/* Could the caller put something else at path: write it, or (being its owner) chmod it? */
static int caller_may_change(const char *path, const struct stat *st, uid_t caller) {
  return st->st_uid == caller || access(path, W_OK) == 0; /* access(): real uid and groups */
}

/* Whether the caller can replace the entry `path` (canonical directories, any final component):
 * by writing any directory from / down to it. In a sticky directory the caller can replace only
 * the entries it owns. */
static enum program_check check_dirs(const char *path, uid_t caller) {
  char prefix[PATH_MAX];
  struct stat dir, entry;
  size_t len = strlen(path);
  if (len >= sizeof prefix) return PROGRAM_NOT_FOUND;
  for (size_t i = 0; i < len; i++) {
    if (path[i] != '/') continue;
    size_t end = i == 0 ? 1 : i; /* the directory path[0..end) holds the next component */
    size_t next = i + 1 + strcspn(path + i + 1, "/");
    memcpy(prefix, path, end);
    prefix[end] = '\0';
    if (stat(prefix, &dir) != 0) return PROGRAM_NOT_FOUND;
    if (!caller_may_change(prefix, &dir, caller)) continue;
    memcpy(prefix, path, next);
    prefix[next] = '\0';
    if ((dir.st_mode & S_ISVTX) && dir.st_uid != caller && lstat(prefix, &entry) == 0 && entry.st_uid != caller)
      continue;
    return PROGRAM_WRITABLE;
  }
  return PROGRAM_OK;
}

/* realpath() of name's directory, then "/" and name's last component (kept as given, so a multi-call
 * program such as busybox or systemctl-as-reboot still sees its name). malloc'd; NULL when the
 * directory does not resolve or the last component is empty, "." or "..". */
static char *canonical_dir_path(const char *name) {
  const char *slash = strrchr(name, '/');
  const char *base = slash ? slash + 1 : name;
  char *dir, *path = NULL;
  if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) return NULL;
  char *head = slash ? strndup(name, slash == name ? 1 : (size_t)(slash - name)) : strdup(".");
  if (!head) return NULL;
  dir = realpath(head, NULL);
  free(head);
  if (dir && asprintf(&path, "%s%s%s", dir, strcmp(dir, "/") == 0 ? "" : "/", base) < 0) path = NULL;
  free(dir);
  return path;
}

/* Follows path's final symlinks (each hop's directories canonical and checked) to a regular file
 * the caller cannot change. */
static enum program_check check_program(const char *path, uid_t caller) {
  char *cur = strdup(path);
  enum program_check r = cur ? PROGRAM_OK : PROGRAM_ERROR;
  for (int hops = 0; r == PROGRAM_OK; hops++) {
    struct stat st;
    if (caller != 0 && (r = check_dirs(cur, caller)) != PROGRAM_OK) break;
    if (lstat(cur, &st) != 0) r = PROGRAM_NOT_FOUND;
    else if (S_ISREG(st.st_mode)) r = caller != 0 && caller_may_change(cur, &st, caller) ? PROGRAM_WRITABLE : PROGRAM_OK;
    else if (!S_ISLNK(st.st_mode) || hops >= 40) r = S_ISLNK(st.st_mode) ? PROGRAM_NOT_FOUND : PROGRAM_NOT_FILE;
    else {
      char target[PATH_MAX], *joined = NULL, *next;
      ssize_t n = readlink(cur, target, sizeof target - 1);
      if (n <= 0) {
        r = PROGRAM_NOT_FOUND;
        break;
      }
      target[n] = '\0';
      if (target[0] != '/') {
        char *slash = strrchr(cur, '/');
        *slash = '\0'; /* cur is absolute: its directory, "" for "/" */
        if (asprintf(&joined, "%s/%s", cur, target) < 0) joined = NULL;
      }
      next = canonical_dir_path(joined ? joined : target);
      free(joined);
      if (!next) {
        r = PROGRAM_NOT_FOUND;
        break;
      }
      free(cur);
      cur = next;
      continue;
    }
    break;
  }
  free(cur);
  return r;
}

enum program_check canonical_program(const char *name, char **out) {
  uid_t caller = getuid(), euid = geteuid();
  *out = NULL;
  /* Resolved as the caller, so a path only root could see into is not found rather than probed. */
  if (setresuid((uid_t)-1, caller, (uid_t)-1) != 0) return PROGRAM_ERROR;
  char *path = canonical_dir_path(name);
  enum program_check r = path ? check_program(path, caller) : PROGRAM_NOT_FOUND;
  if (setresuid((uid_t)-1, euid, (uid_t)-1) != 0 || geteuid() != euid) {
    free(path);
    return PROGRAM_ERROR;
  }
  if (r != PROGRAM_OK) free(path);
  else *out = path;
  return r;
}
