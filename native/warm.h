/* The caller's warm requester (`apes __request --serve`, cli/elevation/resident.ts) as the shim's
 * requester child sees it. Runs only in that child, after it became the caller for good: nothing
 * here is privileged, and nothing it gets is trusted (the verifier checks the token as always). */
#ifndef APES_WARM_H
#define APES_WARM_H
#include <stddef.h>
#include <sys/types.h>

/* The environment variables the requester reads (every APES_* too), whose values pick the warm
 * requester: one started with other values would read another session, config or CA. Kept equal to
 * the TypeScript sources by test/unit/warm-requester-env.test.ts. */
extern const char *const WARM_ENV[];

/* Where the caller's warm requester for this environment and executable listens: dir (size dn) is
 * $XDG_RUNTIME_DIR/apes when that is an absolute directory of uid, else /tmp/apes-<uid>; name (size
 * nn) is requester-<digest>.sock. 0, or -1 when warm requesters are off (APES_KEEP_WARM=0) or a path
 * does not fit. `exec_id` names the executable (dev, inode, size, mtime). */
int warm_socket(char *const *envp, uid_t uid, const char *exec_id, char *dir, size_t dn, char *name, size_t nn);

/* The digest's input, for the unit tests: "v1", exec_id, then each WARM_ENV name with its value (or
 * unset), then every APES_* entry of envp in byte order; NUL-separated. Returns its SHA-256 as 64 hex
 * digits in out (65 bytes). 0, or -1 out of memory. */
int warm_digest(char *const *envp, const char *exec_id, char out[65]);

/* Connected to dir/name (the caller's own socket, checked): sends the request for rargv (NULL
 * terminated, rargv[0] "apes") and relays the answer to fds 1, 2 and 3, then _exits with the status
 * the warm requester reported (1 when it goes away first). Returns -1 without having sent anything
 * when there is nobody to talk to. */
int warm_request(const char *dir, const char *name, char *const *rargv);

/* Parses one frame header (without its newline): `1 N`, `2 N`, `3 N` (*fd, *len), `close 3` (*fd = 3,
 * *len = -1) or `exit S` (*fd = 0, *len = S). 0, or -1 when it is none of these. Pure. */
int warm_frame_header(const char *line, size_t n, int *fd, long *len);

#endif
