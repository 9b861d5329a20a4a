/* The resident verifier (`apes verifier serve`, docs/elevation.md section 3) as the shim sees it: one
 * request and one answer over its socket, which sock_connect_owned has checked is _apes's. */
#ifndef APES_RESIDENT_H
#define APES_RESIDENT_H
#include <stddef.h>

#include "proc.h" /* struct conversation */

/* Its socket's name in APES_CACHE_DIR (VERIFIER_SOCKET of cli/commands/verifier/serve.ts). */
#define RESIDENT_SOCKET "verifier.sock"
/* The largest policy sent (MAX_POLICY_BYTES of verifier/verify.ts); a larger one goes to a one-shot verifier. */
#define RESIDENT_MAX_POLICY (256 * 1024)

/* Splits an answer `<verdict line>\nexit <code>\n<diagnostics>`: 0 with the verdict's length (without
 * its newline), the exit code (0-255, no sign or leading zero) and where the diagnostics begin; -1
 * when it is not of that form. Pure. */
int resident_answer_split(const char *buf, size_t n, size_t *verdict_len, int *code, size_t *diag_start);

/* Writes `policy <N>\n`, the policy, then c->req to fd, and reads the answer to EOF before deadline_ms:
 * c->out gets the verdict line (with its newline, at most c->outmax bytes), c->diag the diagnostics
 * (at most MAX_DIAG kept, the rest counted in c->dropped). Returns the exit code the resident
 * reported, -2 past the deadline, -1 when the answer is missing, too long or malformed. Closes fd. */
int resident_converse(int fd, const char *policy, size_t policylen, struct conversation *c, long long deadline_ms);

#endif
