#define _GNU_SOURCE
#include "sock.h"

#include "proc.h" /* now_ms */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int wait_readable(int fd, long long deadline_ms) {
  for (;;) {
    long long left = deadline_ms ? deadline_ms - now_ms() : -1;
    struct pollfd pf = {fd, POLLIN, 0};
    int r = poll(&pf, 1, !deadline_ms ? -1 : left > 0 ? (int)left : 0);
    if (r > 0) return 1;
    if (r < 0 && errno != EINTR) return -1;
    if (r == 0 && deadline_ms && left <= 0) return 0;
  }
}

/* The directory and the socket in it are the owner's alone. Checked on a directory fd, so the socket
 * looked at is the one in the directory checked; the peer check after connect decides in the end. */
static int owned_socket(const char *dir, const char *name, uid_t owner) {
  struct stat st;
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dfd < 0) return errno == ELOOP || errno == ENOTDIR ? (errno = EPERM, -1) : -1;
  int ok = fstat(dfd, &st) == 0 && st.st_uid == owner && !(st.st_mode & 077);
  if (ok && fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
    int err = errno;
    close(dfd);
    errno = err;
    return -1;
  }
  close(dfd);
  if (!ok || !S_ISSOCK(st.st_mode) || st.st_uid != owner) {
    errno = EPERM;
    return -1;
  }
  return 0;
}

int sock_connect_owned(const char *dir, const char *name, uid_t owner) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  int n = snprintf(addr.sun_path, sizeof addr.sun_path, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= sizeof addr.sun_path || strchr(name, '/')) {
    errno = n >= 0 && strchr(name, '/') ? EINVAL : ENAMETOOLONG;
    return -1;
  }
  if (owned_socket(dir, name, owner) != 0) return -1;
  /* Non-blocking, so a listener whose backlog is full cannot hang us: that counts as refused. */
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    int err = errno == EAGAIN ? ECONNREFUSED : errno;
    close(fd);
    errno = err;
    return -1;
  }
  struct ucred cred;
  socklen_t len = sizeof cred;
  int flags = fcntl(fd, F_GETFL);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred || cred.uid != owner ||
      flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    close(fd);
    errno = EPERM;
    return -1;
  }
  return fd;
}

int sock_greeted(int fd, long long deadline_ms) {
  static const char READY[] = "ready\n";
  char got[sizeof READY - 1];
  size_t n = 0;
  /* One byte at a time: nothing after the greeting may be taken from the socket here. */
  while (n < sizeof got) {
    if (wait_readable(fd, deadline_ms) != 1) return -1;
    ssize_t r = read(fd, got + n, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0 || got[n] != READY[n]) return -1;
    n++;
  }
  return 0;
}

int send_all(int fd, const void *buf, size_t len, long long deadline_ms) {
  const char *p = buf;
  int is_socket = 1;
  while (len > 0) {
    long long left = deadline_ms ? deadline_ms - now_ms() : -1;
    if (deadline_ms && left <= 0) {
      errno = ETIMEDOUT;
      return -1;
    }
    struct pollfd pf = {fd, POLLOUT, 0};
    int r = poll(&pf, 1, deadline_ms ? (int)left : -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) continue; /* the deadline is checked at the top */
    /* On a pipe, POLLOUT promises room for PIPE_BUF bytes: no more, or a blocking write could hang. */
    ssize_t w = is_socket ? send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT) : write(fd, p, len < PIPE_BUF ? len : PIPE_BUF);
    if (w < 0 && is_socket && errno == ENOTSOCK) {
      is_socket = 0;
      continue;
    }
    if (w < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (w < 0) return -1;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}
