/* Which files the shim may trust, and a lock that cannot hang it. Small effectful helpers (stat,
 * flock) with their decisions kept as pure functions, shared with the C unit tests. */
#ifndef APES_SECURE_H
#define APES_SECURE_H
#include <stddef.h>
#include <sys/stat.h>

/* A directory nobody but root can change an entry of: owned by root and not group- or
 * world-writable, unless sticky (like /tmp: others may add entries but not rename or remove
 * root's). The same rule sudo applies to the directories of its sudoers files. */
int dir_trusted(const struct stat *st);
/* A file nobody but root can change: regular, owned by root, not group- or world-writable. */
int file_trusted(const struct stat *st);

/* Checks every directory from / down to the one holding path (absolute): each must exist, be a real
 * directory (no symlinks) and be dir_trusted. Returns 0, or -1 with errno set (EPERM: untrusted,
 * ELOOP: a symlink) and the offending directory in bad (size n). With every directory checked, the
 * later open of path by name names what was checked: only root could have swapped anything. */
int parents_trusted(const char *path, char *bad, size_t n);

/* flock(fd, LOCK_EX), retried without blocking every few milliseconds until ms have passed; 0, or -1
 * with errno (EWOULDBLOCK when another process held the lock throughout). */
int lock_within(int fd, int ms);

#endif
