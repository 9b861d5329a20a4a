#define _GNU_SOURCE
#include "secure.h"

#include "proc.h" /* now_ms */

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>

int dir_trusted(const struct stat *st) {
  return S_ISDIR(st->st_mode) && st->st_uid == 0 && (!(st->st_mode & 022) || (st->st_mode & S_ISVTX));
}

int file_trusted(const struct stat *st) {
  return S_ISREG(st->st_mode) && st->st_uid == 0 && !(st->st_mode & 022);
}

int parents_trusted(const char *path, char *bad, size_t n) {
  char dir[PATH_MAX];
  const char *last = strrchr(path, '/');
  size_t len = last ? (size_t)(last - path) : 0;
  if (path[0] != '/' || len >= sizeof dir) {
    errno = EINVAL;
    return -1;
  }
  memcpy(dir, path, len);
  dir[len] = '\0';
  /* "/", then each longer prefix: /a, /a/b, ... up to the directory itself */
  for (size_t end = 0;;) {
    struct stat st;
    char saved = dir[end];
    dir[end] = '\0';
    int r = lstat(end == 0 ? "/" : dir, &st);
    dir[end] = saved;
    if (r != 0 || S_ISLNK(st.st_mode) || !dir_trusted(&st)) {
      if (r == 0) errno = S_ISLNK(st.st_mode) ? ELOOP : EPERM;
      int err = errno;
      if (n > 0) snprintf(bad, n, "%.*s", end == 0 ? 1 : (int)end, end == 0 ? "/" : dir);
      errno = err;
      return -1;
    }
    if (end == len) return 0;
    end++;
    while (end < len && dir[end] != '/') end++;
  }
}

int lock_within(int fd, int ms) {
  const struct timespec pause = {0, 10 * 1000 * 1000};
  long long deadline = now_ms() + ms;
  for (;;) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) return 0;
    if (errno != EWOULDBLOCK && errno != EINTR) return -1;
    if (now_ms() >= deadline) {
      errno = EWOULDBLOCK;
      return -1;
    }
    nanosleep(&pause, NULL);
  }
}
