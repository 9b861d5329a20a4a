/* Process plumbing of the shim: its own stdio, the verifier's deadline and diagnostics, and the
 * canonical path of a command given with a '/'. Effects only; the decisions stay in apes-shim.c. */
#ifndef APES_PROC_H
#define APES_PROC_H
#include <stddef.h>
#include <sys/types.h>

/* The verifier's whole run (from its start or adoption, when the requester has an approved grant: the token
 * fetch, then request, policy, discovery, JWKS, consume, verdict) ends within this, or the shim kills
 * its process group and denies (verifier_timeout). */
#define VERIFY_DEADLINE_S 20
/* At most this much of the verifier's stderr is kept and forwarded to the caller, escaped. */
#define MAX_DIAG 4096

/* fds 0-2 open with a usable access mode (0 readable, 1 and 2 writable); a missing or wrong one is
 * replaced by /dev/null. In a setuid program the C library has already reopened closed ones with
 * the opposite mode, so checking only for closed fds is not enough. 0, or -1 on failure. */
int stdio_normalise(void);

/* In a forked child, after its last change of credentials (which clears the setting): SIGKILL when
 * the parent dies. -1 when the parent is already gone (the usual race) or prctl fails. */
int die_with_parent(pid_t parent);

/* One conversation with a child: req goes to in_fd while out_fd (up to outmax bytes) and err_fd
 * (up to MAX_DIAG bytes, the rest dropped) are read, until both are at EOF and the child has
 * exited. The fds are closed on return. */
struct conversation {
  int in_fd, out_fd, err_fd;
  const char *req;
  size_t reqlen;
  char *out;
  size_t outmax, outlen;
  char diag[MAX_DIAG];
  size_t diaglen, dropped;
};
/* The monotonic clock in milliseconds. */
long long now_ms(void);

/* The child's wait status, or -2 when now_ms() passed deadline_ms (its process group and itself are
 * SIGKILLed and reaped first), or -1 on an error (the child is killed too). */
int converse(pid_t pid, struct conversation *c, long long deadline_ms);

/* Writes diag to fd 2, bytes other than printable ASCII and newline as \xNN, without blocking for
 * longer than a second on a full pipe (then the rest is dropped). */
void forward_diag(const char *diag, size_t len, size_t dropped);

enum program_check {
  PROGRAM_OK = 0,
  PROGRAM_NOT_FOUND, /* no such file, or not reachable for the caller */
  PROGRAM_NOT_FILE,  /* not a regular file */
  PROGRAM_WRITABLE,  /* the caller can change the file, or a directory on its path */
  PROGRAM_ERROR,     /* out of memory, or the ids could not be switched back */
};
/* name contains '/': *out becomes its canonical directory (realpath, resolved with the caller's
 * permissions) joined with its last component as given (so a multi-call program keeps its name), and
 * the check says whether the caller (real uid and groups) could change what that path runs: write
 * or own the file, or write any directory from / down to it or to any symlink on the way to it (a
 * sticky directory counts only for entries the caller owns). A root caller passes the write check. */
enum program_check canonical_program(const char *name, char **out);

#endif
