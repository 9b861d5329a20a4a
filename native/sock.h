/* Unix-socket plumbing shared by the shim's two resident clients (the verifier service and the
 * caller's warm requester, docs/elevation.md): a connect that checks who is listening, and bounded
 * writes and waits. Effects only; no decision is made here beyond "this peer is who we expect". */
#ifndef APES_SOCK_H
#define APES_SOCK_H
#include <stddef.h>
#include <sys/types.h>

/* Waits until fd is readable or hung up: 1, 0 once deadline_ms (0: none) has passed, -1 on an error.
 * Past the deadline what is already there still counts (the process may have been stopped, Ctrl-Z). */
int wait_readable(int fd, long long deadline_ms);

/* Connects to the unix socket dir/name. dir must be a real directory (no symlink) owned by owner with
 * no group or other permission bits, name a socket (not followed) owned by owner, and the peer that
 * accepted (SO_PEERCRED) must run as owner. Returns a blocking CLOEXEC fd, or -1 with errno: ENOENT
 * (no directory or socket), ECONNREFUSED (nobody listens, or its backlog is full), EPERM (an owner,
 * mode or peer check failed), ENAMETOOLONG, or what the system calls said. Never blocks. */
int sock_connect_owned(const char *dir, const char *name, uid_t owner);

/* Reads the resident's greeting (GREETING_READY of protocol/resident.ts) before deadline_ms: 0 when it
 * is "ready\n", -1 for "busy\n" (it serves enough clients already), anything else, EOF or no greeting
 * in time; the client then uses its one-shot path, having sent nothing. */
int sock_greeted(int fd, long long deadline_ms);
/* How long a client waits for the greeting: a resident that is alive answers in microseconds. */
#define GREETING_MS 1000

/* Writes all len bytes of buf to fd before deadline_ms (0: none): 0, or -1 with errno (ETIMEDOUT past
 * the deadline, EPIPE when the reader is gone). Never raises SIGPIPE on a socket (MSG_NOSIGNAL); on a
 * pipe the caller must ignore SIGPIPE. */
int send_all(int fd, const void *buf, size_t len, long long deadline_ms);

#endif
