/*
 * apes: the setuid-root shim, installed as $(PREFIX)/bin/apes (4755 root:root).
 *
 * The only privileged code of apes besides the approved command itself. It decides in C whether
 * argv is an elevation (`apes [run] [options] -- CMD...`); anything else runs the real apes
 * executable (EXEC) as the calling user. For an elevation it runs, in this order:
 *   1. sanity checks and the cmd_hash of CMD, as root but touching only argv and fixed paths;
 *   2. the requester (`apes __request`) as the calling user, which gets the AuthZ-JWT approved by
 *      a human and hands it back through a pipe;
 *   3. the verifier (`apes __verify`) as the unprivileged _apes user with a fixed environment,
 *      which checks the JWT against the root-only policy and consumes the grant (started with the
 *      requester when the caller's one slot is free, else at its READY: start_verifier);
 *   4. the audit line, then execve of CMD as run_as with an allow-listed environment.
 * From the moment the audit log is open (step 1) every exit leaves a line in it, and an `attempt`
 * line is on disk before the verifier can consume a grant.
 * Every path, including the EXEC it trusts, is fixed at compile time (Makefile), never taken from
 * argv or the environment. The contract with the TypeScript halves: docs/elevation.md.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/pidfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "elev.h"
#include "json.h"
#include "proc.h"
#include "resident.h"
#include "secure.h"
#include "sock.h"
#include "warm.h"

#if !defined(APES_EXEC) || !defined(APES_CONFIG) || !defined(APES_AUDIT_LOG) || !defined(APES_CACHE_DIR)
#error "build with `make native`: the Makefile sets APES_EXEC, APES_CONFIG, APES_AUDIT_LOG, APES_CACHE_DIR"
#endif
#ifndef APES_SLOT_DIR
#error "APES_SLOT_DIR (the root-only directory of the per-user early-verifier slots) comes from the Makefile"
#endif
#if !defined(EARLY_IDLE_MS) || EARLY_IDLE_MS < 1
#error "EARLY_IDLE_MS (how long an early verifier may wait for READY before it is killed) comes from the Makefile"
#endif
#ifndef APES_EXEC_DIR
#error "APES_EXEC_DIR (the directory of APES_EXEC) comes from the Makefile"
#endif

#define VERIFY_USER "_apes"
#define SECURE_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MAX_TOKEN (16 * 1024) /* the AuthZ-JWT: MAX_JWT_LENGTH of protocol/jwt.ts, which every TS reader uses */
#define MAX_VERDICT (64 * 1024)
#define AUDIT_LOCK_MS 3000 /* longer than any write; a holder past this is stuck or hostile */
#define MIN_FDS 64         /* what the shim itself needs open at most, with room to spare */

enum {
  EXIT_USAGE = 2,
  EXIT_UNAVAILABLE = 69,
  EXIT_PENDING = 75,
  EXIT_DENIED = 77,
  EXIT_CONFIG = 78,
  EXIT_CANNOT_EXEC = 126,
  EXIT_NOT_FOUND = 127,
  EXIT_INTERRUPTED = 130,
};

struct user {
  char *name, *home, *shell;
  uid_t uid;
  gid_t gid;
};

/* What the audit line records about this attempt. */
static struct {
  struct user caller;
  struct user target;
  char *const *cmd;
  size_t ncmd;
  char hash[CMD_HASH_LEN];
  const char *grant_id, *sub, *decided_by, *issuer;
  pid_t requester; /* a requester that delivered its token and is still to be reaped, else 0 */
  int audited; /* the audit log is open: every exit from here on writes a line */
} A;

static int audit(const char *decision, const char *reason);

/* One "apes: ..." line on stderr. */
static void vsay(const char *fmt, va_list ap) {
  fputs("apes: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsay(fmt, ap);
  va_end(ap);
}

static const char *audit_problem = "cannot be written"; /* why the last audit() failed */

/* No line could be written: nothing may run, and there is nowhere left to record it but syslog. */
static void audit_failed(void) __attribute__((noreturn));
static void audit_failed(void) {
  say("not run: the audit log %s %s", APES_AUDIT_LOG, audit_problem);
  exit(EXIT_DENIED);
}

/* The line first (a caller's stderr cannot stop it), then the message, then the exit. */
static void leave(int code, const char *reason, const char *fmt, va_list ap) __attribute__((noreturn));
static void leave(int code, const char *reason, const char *fmt, va_list ap) {
  int ok = !reason || audit("deny", reason) == 0;
  if (fmt) vsay(fmt, ap);
  if (!ok) audit_failed();
  exit(code);
}

/* Fails; once the audit log is open, as an audited shim_error. */
static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  leave(code, A.audited ? "shim_error" : NULL, fmt, ap);
}

/* Record the denial, then leave without running anything. */
static void deny(const char *reason, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
static void deny(const char *reason, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  leave(code, reason, fmt, ap);
}

/* In a forked child: say what failed and leave without running atexit handlers or flushing. */
static void child_fail(const char *what) __attribute__((noreturn));
static void child_fail(const char *what) {
  fprintf(stderr, "apes: %s: %s\n", what, strerror(errno));
  _exit(1);
}

/* fds 0-2 must be open, or a file we open later could become someone's stdout; and usable (0 for
 * reading, 1 and 2 for writing), or the requester dies on EBADF and the command gets a read-only stdout. */
static void sane_stdio(void) {
  if (stdio_normalise() != 0) _exit(1);
}

static void reset_signals(void) {
  sigset_t none;
  for (int s = 1; s < NSIG; s++)
    if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL); /* glibc-internal ones fail: harmless */
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
}

static int ids_are(uid_t uid, gid_t gid) {
  uid_t r, e, s;
  gid_t rg, eg, sg;
  if (getresuid(&r, &e, &s) != 0 || getresgid(&rg, &eg, &sg) != 0) return 0;
  if (r != uid || e != uid || s != uid || rg != gid || eg != gid || sg != gid) return 0;
  /* Once dropped, root must be out of reach for good. */
  if (uid != 0 && (setuid(0) != -1 || seteuid(0) != -1)) return 0;
  if (uid != 0 && gid != 0 && setgid(0) != -1) return 0;
  return 1;
}

/* Become the calling user for good: real ids everywhere. The supplementary groups are the ones the
 * caller already has (a sandbox that dropped groups keeps them dropped). */
static int drop_to_caller(void) {
  uid_t uid = getuid();
  gid_t gid = getgid();
  if (setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) return -1;
  return ids_are(uid, gid) ? 0 : -1;
}

static int copy_user(const struct passwd *pw, struct user *u) {
  u->name = strdup(pw->pw_name);
  u->home = strdup(pw->pw_dir ? pw->pw_dir : "/");
  u->shell = strdup(pw->pw_shell && *pw->pw_shell ? pw->pw_shell : "/bin/sh");
  u->uid = pw->pw_uid;
  u->gid = pw->pw_gid;
  return u->name && u->home && u->shell ? 0 : -1;
}

/* EXEC is what runs as the user, as the requester and as the verifier: only root may change it. */
static void check_exec(void) {
  struct stat st;
  if (stat(APES_EXEC_DIR, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022))
    die(EXIT_CONFIG, "%s must be a directory owned by root and writable only by root: run `sudo make install`",
        APES_EXEC_DIR);
  if (stat(APES_EXEC, &st) != 0)
    die(EXIT_CONFIG, "%s is missing: run `sudo make install`", APES_EXEC);
  if (!S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022))
    die(EXIT_CONFIG, "%s must be a regular file owned by root and not group- or world-writable", APES_EXEC);
}

/* Not an elevation: nothing privileged to do. */
static void run_unprivileged(char **argv) __attribute__((noreturn));
static void run_unprivileged(char **argv) {
  if (drop_to_caller() != 0) die(1, "cannot drop privileges: %s", strerror(errno));
  argv[0] = (char *)"apes";
  execv(APES_EXEC, argv);
  die(EXIT_CANNOT_EXEC, "cannot execute %s: %s", APES_EXEC, strerror(errno));
}

/* ---- limits ---- */

static struct rlimit caller_fsize, caller_nofile, caller_core;

static void on_sigxfsz(int sig) { (void)sig; } /* a write past RLIMIT_FSIZE then fails with EFBIG */

/* The caller's resource limits must not kill the shim or starve it: SIGXFSZ becomes an error (a
 * handler, not SIG_IGN, so exec gives every child the default back); RLIMIT_FSIZE is lifted and
 * RLIMIT_NOFILE raised to MIN_FDS where the kernel lets us (CAP_SYS_RESOURCE; without it the soft
 * limits go up to the hard ones). The caller's values are kept for the requester and the command. */
static void shim_limits(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigxfsz;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGXFSZ, &sa, NULL) != 0 || getrlimit(RLIMIT_FSIZE, &caller_fsize) != 0 ||
      getrlimit(RLIMIT_NOFILE, &caller_nofile) != 0 || getrlimit(RLIMIT_CORE, &caller_core) != 0)
    die(1, "cannot read the resource limits: %s", strerror(errno));
  struct rlimit fsize = {RLIM_INFINITY, RLIM_INFINITY}, fds = caller_nofile;
  if (setrlimit(RLIMIT_FSIZE, &fsize) != 0) {
    fsize.rlim_cur = fsize.rlim_max = caller_fsize.rlim_max;
    setrlimit(RLIMIT_FSIZE, &fsize);
  }
  if (fds.rlim_cur < MIN_FDS) {
    fds.rlim_cur = MIN_FDS;
    if (fds.rlim_max < MIN_FDS) fds.rlim_max = MIN_FDS;
    if (setrlimit(RLIMIT_NOFILE, &fds) != 0) {
      fds.rlim_cur = fds.rlim_max = caller_nofile.rlim_max;
      setrlimit(RLIMIT_NOFILE, &fds);
    }
  }
}

/* Before exec of the requester or the command: the caller's own limits again. The command (root's)
 * never dumps core: a core of it would land in the caller's cwd; it may raise the soft limit itself. */
static int caller_limits(int no_core) {
  struct rlimit core = caller_core;
  if (no_core) core.rlim_cur = 0;
  return setrlimit(RLIMIT_FSIZE, &caller_fsize) == 0 && setrlimit(RLIMIT_NOFILE, &caller_nofile) == 0 &&
                 setrlimit(RLIMIT_CORE, &core) == 0
             ? 0
             : -1;
}

/* ---- audit ---- */

static void set_ignore(int sig, int ignore) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = ignore ? SIG_IGN : SIG_DFL;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, NULL);
}

static void kv_str(struct buf *b, const char *key, const char *value) {
  buf_printf(b, ",\"%s\":", key);
  json_str(b, value ? value : "", value ? strlen(value) : 0);
}

static int audit_fd = -1;

/* The audit log opened for appending (close-on-exec), created root:root 0600 (the shim is setuid,
 * not setgid: its group is still the caller's). -1 (errno) when it cannot be opened, -2 when it is not
 * a file only root can change: regular, root-owned, not group/world-writable, one link. */
static int open_log(void) {
  struct stat st;
  int fd = open(APES_AUDIT_LOG, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  if (fstat(fd, &st) != 0 || !file_trusted(&st) || st.st_nlink != 1 || (st.st_gid != 0 && fchown(fd, 0, 0) != 0)) {
    close(fd);
    return -2;
  }
  return fd;
}

/* Step 1 opens the audit log for the whole attempt and checks it like the policy: every directory
 * from / root's alone (so nobody can plant a FIFO, a symlink or a hard link to another file in its
 * place), then the file itself. A log we cannot trust or open refuses the elevation before anything
 * else; the refusal reaches syslog only. */
static void audit_open(void) {
  char bad[PATH_MAX];
  int fd, err;
  if (parents_trusted(APES_AUDIT_LOG, bad, sizeof bad) != 0) {
    audit("deny", "audit_insecure"); /* syslog only */
    die(EXIT_CONFIG, "not run: %s must be a directory owned by root and writable only by root (or sticky)", bad);
  }
  fd = open_log();
  err = errno;
  if (fd < 0) audit("deny", "audit_insecure");
  if (fd == -1) die(EXIT_CONFIG, "not run: cannot open the audit log %s: %s", APES_AUDIT_LOG, strerror(err));
  if (fd < 0)
    die(EXIT_CONFIG, "not run: the audit log %s must be a regular file owned by root, not group- or world-writable",
        APES_AUDIT_LOG);
  audit_fd = fd;
  A.audited = 1;
}

/* The log was rotated (renamed, maybe recreated) while we waited for approval: the next line goes to
 * the file the name now gives. Its directories were checked in step 1 and only root can change them;
 * if the new file cannot be opened the line still goes to the rotated one. */
static void follow_rotation(void) {
  struct stat by_name, ours;
  if (stat(APES_AUDIT_LOG, &by_name) == 0 && fstat(audit_fd, &ours) == 0 && by_name.st_dev == ours.st_dev &&
      by_name.st_ino == ours.st_ino)
    return;
  int fd = open_log();
  if (fd < 0) return;
  close(audit_fd);
  audit_fd = fd;
}

/* While the shim holds the audit lock the caller cannot stop it: every blockable signal is blocked
 * (a terminal's Ctrl-Z too) and, while still root, the real uid is root for that moment, so the
 * caller's kill(SIGSTOP) fails with EPERM. Returns 1 when it switched the real uid. */
static int hold_still(sigset_t *saved) {
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, saved);
  return geteuid() == 0 && setresuid(0, (uid_t)-1, (uid_t)-1) == 0;
}

/* Back to the caller's real uid (what the requester drops to), or nothing else may happen. */
static void move_again(const sigset_t *saved, int switched) {
  if (switched && (setresuid(A.caller.uid, (uid_t)-1, (uid_t)-1) != 0 || getuid() != A.caller.uid)) _exit(EXIT_DENIED);
  sigprocmask(SIG_SETMASK, saved, NULL);
}

/* Appends line under the lock, held for the write only; 0 once it is complete and on disk. A short
 * write (disk full, RLIMIT_FSIZE) is cut off again so the log never holds a torn line. */
static int audit_write(const struct buf *line) {
  struct stat st;
  sigset_t saved;
  size_t off = 0;
  follow_rotation();
  int switched = hold_still(&saved), locked = lock_within(audit_fd, AUDIT_LOCK_MS) == 0;
  if (!locked)
    audit_problem = errno == EWOULDBLOCK ? "was locked by another process for 3 s: try again" : "cannot be locked";
  if (locked && fstat(audit_fd, &st) == 0) {
    while (off < line->len) {
      ssize_t n = write(audit_fd, line->p + off, line->len - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      off += (size_t)n;
    }
    if (off != line->len) audit_problem = "is full or over the file size limit";
    if (off != line->len && off > 0 && ftruncate(audit_fd, st.st_size) != 0) off = 0;
  }
  if (locked) flock(audit_fd, LOCK_UN);
  move_again(&saved, switched);
  if (off != line->len) return -1;
  if (fsync(audit_fd) != 0) {
    audit_problem = "cannot be synced to disk";
    return -1;
  }
  return 0;
}

/* One JSON line to AUDIT_LOG (and a summary to syslog); 0 only when it is on disk. decision is
 * attempt (before the verifier), allow, deny or pending. */
static int audit(const char *decision, const char *reason) {
  struct buf b = {0}, cmd = {0}, grant = {0};
  int ok;
  json_argv(&cmd, A.cmd, A.ncmd);
  json_str(&grant, A.grant_id ? A.grant_id : "", A.grant_id ? strlen(A.grant_id) : 0);
  buf_printf(&b, "{\"ts\":%lld,\"decision\":\"%s\"", (long long)time(NULL), decision);
  kv_str(&b, "reason", reason);
  kv_str(&b, "user", A.caller.name);
  buf_printf(&b, ",\"uid\":%lu", (unsigned long)A.caller.uid);
  kv_str(&b, "run_as", A.target.name);
  buf_puts(&b, ",\"argv\":");
  buf_put(&b, cmd.p, cmd.len);
  kv_str(&b, "cmd_hash", A.hash);
  kv_str(&b, "grant_id", A.grant_id);
  kv_str(&b, "sub", A.sub);
  kv_str(&b, "decided_by", A.decided_by);
  kv_str(&b, "issuer", A.issuer);
  buf_printf(&b, ",\"pid\":%ld}\n", (long)getpid());

  openlog("apes", LOG_PID, LOG_AUTHPRIV);
  syslog(LOG_AUTHPRIV | (strcmp(decision, "allow") == 0 || strcmp(decision, "attempt") == 0 ? LOG_NOTICE : LOG_WARNING),
         "%s%s%s: user=%s uid=%lu run_as=%s grant=%.80s cmd_hash=%s argv=%.400s", decision,
         reason && *reason ? " " : "", reason ? reason : "", A.caller.name ? A.caller.name : "",
         (unsigned long)A.caller.uid, A.target.name ? A.target.name : "", grant.p ? grant.p : "", A.hash,
         cmd.p ? cmd.p : "");
  closelog();

  if (b.err || cmd.err) audit_problem = "cannot be written (out of memory)";
  ok = audit_fd >= 0 && !b.err && !cmd.err && audit_write(&b) == 0;
  buf_free(&b);
  buf_free(&cmd);
  buf_free(&grant);
  return ok ? 0 : -1;
}

/* ---- children and pipes ---- */

/* Make fd available as target in a child that is about to exec: inherited, no CLOEXEC. */
static int move_fd(int fd, int target) {
  if (fd == target) return fcntl(fd, F_SETFD, 0);
  return dup2(fd, target) == target ? 0 : -1;
}

static int wait_child(pid_t pid) {
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -1;
  return st;
}

static int reason_ok(const char *r);

/* Step 3's verifier, as _apes with a fixed environment. Its start-up (a Node runtime, tens of ms) is
 * overlapped with the requester's work in one of two bounded ways; it learns nothing before the shim
 * writes its request line (the token) in either:
 *  - early: started before the requester, but only while the shim holds the caller's slot (one per
 *    uid: a non-blocking flock on a root-only file), and killed when the requester has not said READY
 *    within EARLY_IDLE_MS; so one user never keeps more than one idle _apes process, whatever they do;
 *  - at READY (the requester has an approved grant), as before, when there was no slot or the early
 *    one was killed: no verifier waits beside a request pending for a human beyond the idle budget. */
struct verifier_proc {
  int cfd;                  /* the policy, handed to the verifier (rewound for a second start) */
  int resident;             /* the resident verifier answered at the start: it gets the request */
  char *policy;             /* with it: the policy's bytes, read from cfd */
  size_t policylen;
  const struct user *user;  /* _apes */
  pid_t pid;                /* 0 until started */
  int in_fd, out_fd, err_fd;
  long long deadline_ms;    /* from its adoption (READY or the token) + VERIFY_DEADLINE_S: its whole run ends by then */
  int early;                /* started before READY; idle until then */
  int slot;                 /* the caller's slot lock while early, else -1 */
  long long idle_until;     /* an early one not adopted by then is killed */
};

/* The caller's early-verifier slot: a root-owned file per uid in APES_SLOT_DIR (every directory from /
 * root's alone, the directory itself 0700), locked without blocking. -1 (no early verifier, the
 * elevation goes on as without one) when anything is off or another elevation of the caller holds it. */
static int take_slot(uid_t uid) {
  char bad[PATH_MAX], name[32];
  struct stat st;
  if (parents_trusted(APES_SLOT_DIR "/x", bad, sizeof bad) != 0) return -1;
  int dfd = open(APES_SLOT_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dfd < 0) return -1;
  if (fstat(dfd, &st) != 0 || st.st_uid != 0 || (st.st_mode & 077)) {
    close(dfd);
    return -1;
  }
  snprintf(name, sizeof name, "early-%lu", (unsigned long)uid);
  int fd = openat(dfd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
  close(dfd);
  if (fd < 0) return -1;
  if (fstat(fd, &st) != 0 || !file_trusted(&st) || st.st_nlink != 1 || flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void release_slot(struct verifier_proc *v) {
  if (v->slot >= 0) close(v->slot); /* the lock goes with the last fd of it: the verifier's closed at exec */
  v->slot = -1;
}

/* Kills an early verifier that was not adopted in time and reaps it; the policy is rewound (the two
 * share its file offset) so a verifier started at READY reads it whole. */
static void retire_early(struct verifier_proc *v) {
  kill(-v->pid, SIGKILL); /* its own session and group, once setsid has run */
  kill(v->pid, SIGKILL);
  if (wait_child(v->pid) == -1) die(1, "cannot reap the idle verifier: %s", strerror(errno));
  close(v->in_fd);
  close(v->out_fd);
  close(v->err_fd);
  v->pid = 0;
  v->early = 0;
  release_slot(v);
  if (lseek(v->cfd, 0, SEEK_SET) != 0) die(EXIT_CONFIG, "cannot rewind the policy: %s", strerror(errno));
}

/* Starts the verifier (early: before the requester, idle until adopted). A later call adopts a running
 * one: from then on its deadline runs. */
static void start_verifier(struct verifier_proc *v, int early) {
  static char *const vargv[] = {"apes", "__verify", "--config-fd", "3", NULL};
  static char *const venv[] = {"PATH=" SECURE_PATH, "HOME=" APES_CACHE_DIR, "LANG=C.UTF-8", "APES_VERIFIER=1",
                               NULL};
  int in[2], outp[2], errp[2], cfd = v->cfd;
  const struct user *verifier = v->user;
  pid_t shim = getpid();

  if (v->resident) { /* nothing to start; its deadline runs from here, as a started one's would */
    if (!v->deadline_ms) v->deadline_ms = now_ms() + (long long)VERIFY_DEADLINE_S * 1000;
    return;
  }
  if (v->pid > 0) {
    if (v->early) {
      v->early = 0;
      v->deadline_ms = now_ms() + (long long)VERIFY_DEADLINE_S * 1000;
      release_slot(v); /* no longer idle: bounded by its deadline, like one started now */
    }
    return;
  }
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(outp, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0)
    die(1, "pipe: %s", strerror(errno));
  v->early = early;
  v->idle_until = now_ms() + EARLY_IDLE_MS;
  v->deadline_ms = now_ms() + (long long)VERIFY_DEADLINE_S * 1000;
  pid_t pid = fork();
  if (pid < 0) die(1, "fork: %s", strerror(errno));
  if (pid == 0) {
    reset_signals(); /* the shim ignores SIGINT and SIGQUIT while the requester runs */
    /* Own session: the caller's terminal cannot signal or stop the verifier. Its stderr is a pipe
     * the shim reads, never the caller's stderr, which the caller can leave full to block it. */
    if (setsid() < 0) child_fail("setsid");
    int c = fcntl(cfd, F_DUPFD_CLOEXEC, 10), i = fcntl(in[0], F_DUPFD_CLOEXEC, 10),
        o = fcntl(outp[1], F_DUPFD_CLOEXEC, 10), e = fcntl(errp[1], F_DUPFD_CLOEXEC, 10);
    if (c < 0 || i < 0 || o < 0 || e < 0 || move_fd(i, 0) != 0 || move_fd(o, 1) != 0 || move_fd(c, 3) != 0)
      child_fail("verifier pipes");
    if (move_fd(e, 2) != 0) _exit(1); /* nowhere left to say so */
    /* No groups, _apes ids, no way back; and no life after the shim's (set after the last id
     * change, which clears it): every exit of the shim before the verdict (pending, a failed
     * requester, a signal) takes the waiting verifier with it. */
    if (setgroups(0, NULL) != 0 || setresgid(verifier->gid, verifier->gid, verifier->gid) != 0 ||
        setresuid(verifier->uid, verifier->uid, verifier->uid) != 0 || !ids_are(verifier->uid, verifier->gid))
      child_fail("cannot become " VERIFY_USER);
    if (die_with_parent(shim) != 0) _exit(1);
    if (chdir(APES_CACHE_DIR) != 0) child_fail(APES_CACHE_DIR);
    execve(APES_EXEC, vargv, venv);
    child_fail("cannot execute " APES_EXEC);
  }
  close(in[0]);
  close(outp[1]);
  close(errp[1]);
  v->pid = pid;
  v->in_fd = in[1];
  v->out_fd = outp[0];
  v->err_fd = errp[0];
}

/* The requester's result pipe: READY as its first line when it has an approved grant and is about
 * to fetch the token (READY_LINE of protocol/elevation.ts), then the token or one reason code, EOF. */
static const char READY[] = "ready\n";
#define READY_LEN (sizeof READY - 1)

/* A connection to the resident verifier that it will serve (checked, and greeted "ready"), or -1. */
static int resident_connect(const struct verifier_proc *v) {
  int fd = sock_connect_owned(APES_CACHE_DIR, RESIDENT_SOCKET, v->user->uid);
  if (fd >= 0 && sock_greeted(fd, now_ms() + GREETING_MS) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Whether the resident verifier answers on its socket (connected and closed again: the request goes
 * over a connection of its own after the `attempt` line). With it, the policy's bytes are read now:
 * what a one-shot verifier would read from the same fd. A policy too large for it, or one that cannot
 * be read whole, leaves the elevation to a one-shot verifier, which judges it. */
static int resident_answers(struct verifier_proc *v) {
  struct stat st;
  int fd = resident_connect(v);
  if (fd < 0) return 0;
  close(fd);
  if (fstat(v->cfd, &st) != 0 || st.st_size < 0 || st.st_size > RESIDENT_MAX_POLICY) return 0;
  size_t size = (size_t)st.st_size, got = 0;
  char *p = malloc(size + 1);
  if (!p) return 0;
  while (got < size) {
    ssize_t r = pread(v->cfd, p + got, size - got, (off_t)got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      free(p);
      return 0;
    }
    got += (size_t)r;
  }
  v->policy = p;
  v->policylen = got;
  v->resident = 1;
  return 1;
}

/* The bound on the requester once a verifier waits for its token (one started or adopted, or the
 * resident's turn begun): 0 before that. */
static long long verifier_deadline(const struct verifier_proc *v) {
  return v->pid > 0 || v->resident ? v->deadline_ms : 0;
}

/* Reads the result pipe to EOF, or until more than max bytes follow the marker. READY, only as the
 * first line, starts the verifier (once: a second one is just bytes of a malformed token), and from
 * then on the verifier's deadline bounds the wait. Returns the count after the marker, -1 on an
 * error, -2 past the deadline. */
static ssize_t read_result(int fd, char *buf, size_t max, struct verifier_proc *v) {
  size_t got = 0;
  int looked = 0;
  for (;;) {
    if (!looked && got >= READY_LEN) {
      looked = 1;
      if (memcmp(buf, READY, READY_LEN) == 0) {
        start_verifier(v, 0);
        memmove(buf, buf + READY_LEN, got - READY_LEN);
        got -= READY_LEN;
      }
    }
    if (got >= (looked ? max : max + READY_LEN)) break;
    int w = wait_readable(fd, v->early ? v->idle_until : verifier_deadline(v));
    if (w == 0 && v->early) {
      retire_early(v); /* idle too long: a human decides; a fresh one at READY */
      continue;
    }
    if (w <= 0) return w == 0 ? -2 : -1;
    ssize_t n = read(fd, buf + got, (looked ? max : max + READY_LEN) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (n == 0) break;
    got += (size_t)n;
  }
  return (ssize_t)got;
}

/* Three non-empty base64url parts joined by dots (a trailing newline allowed): the shape of an
 * AuthZ-JWT, which a reason code ([a-z0-9_], no dot) never has. The verifier checks the rest. */
static int jwt_shaped(const char *s, size_t n) {
  static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
  if (n > 0 && s[n - 1] == '\n') n--;
  if (n == 0 || n > MAX_TOKEN) return 0;
  int dots = 0;
  size_t part = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '.') {
      if (part == 0 || ++dots > 2) return 0;
      part = 0;
    } else if (!s[i] || !strchr(b64url, s[i])) {
      return 0;
    } else {
      part++;
    }
  }
  return dots == 2 && part > 0;
}

/* The requester's wait status; once the verifier runs, -2 when its deadline passes first. */
static int wait_requester(pid_t pid, const struct verifier_proc *v) {
  if (verifier_deadline(v)) {
    int pfd = pidfd_open(pid, 0), w = pfd < 0 ? -1 : wait_readable(pfd, verifier_deadline(v));
    if (pfd >= 0) close(pfd);
    if (w <= 0) return w == 0 ? -2 : -1;
  }
  return wait_child(pid);
}

/* In the requester's child, the caller for good: the caller's warm requester answers (and this never
 * returns), or `apes __request` runs, told where to start one for next time (docs/elevation.md section 2). */
static void exec_requester(char **rargv) __attribute__((noreturn));
static void exec_requester(char **rargv) {
  char dir[PATH_MAX], name[64], exec_id[96], path[PATH_MAX + 64];
  struct stat st;
  size_t n = 0;
  while (rargv[n]) n++;
  if (stat(APES_EXEC, &st) == 0 &&
      snprintf(exec_id, sizeof exec_id, "%lu:%lu:%lld:%lld.%09ld", (unsigned long)st.st_dev, (unsigned long)st.st_ino,
               (long long)st.st_size, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec) < (int)sizeof exec_id &&
      warm_socket(environ, getuid(), exec_id, dir, sizeof dir, name, sizeof name) == 0) {
    warm_request(dir, name, rargv); /* returns only when nobody answers there */
    char **with = calloc(n + 3, sizeof *with);
    if (with && snprintf(path, sizeof path, "%s/%s", dir, name) < (int)sizeof path) {
      /* apes __request --result-fd 3 --resident PATH [options] -- CMD... */
      memcpy(with, rargv, 4 * sizeof *with);
      with[4] = (char *)"--resident";
      with[5] = path;
      memcpy(with + 6, rargv + 4, (n - 4 + 1) * sizeof *with);
      rargv = with;
    }
  }
  execv(APES_EXEC, rargv);
  child_fail("cannot execute " APES_EXEC);
}

/* Step 2: the requester, as the calling user with the caller's environment. Returns the token; starts
 * the verifier when the requester says it has an approved grant. */
static char *request_token(int argc, char **argv, const struct elevation *el, struct verifier_proc *v) {
  static char token[MAX_TOKEN + 2 + READY_LEN];
  int p[2], st;
  size_t nopt = (size_t)(el->opt_end - el->opt_start), k = 0;
  char **rargv = calloc(5 + nopt + 1 + A.ncmd + 1, sizeof *rargv);
  if (!rargv) die(1, "out of memory");
  rargv[k++] = (char *)"apes";
  rargv[k++] = (char *)"__request";
  rargv[k++] = (char *)"--result-fd";
  rargv[k++] = (char *)"3";
  for (int i = el->opt_start; i < el->opt_end; i++) rargv[k++] = argv[i];
  rargv[k++] = (char *)"--";
  for (int i = el->cmd_start; i < argc; i++) rargv[k++] = argv[i];
  rargv[k] = NULL;

  if (pipe2(p, O_CLOEXEC) != 0) die(1, "pipe: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0) die(1, "fork: %s", strerror(errno));
  if (pid == 0) {
    if (drop_to_caller() != 0) child_fail("cannot drop privileges");
    if (caller_limits(0) != 0) child_fail("cannot restore the resource limits");
    if (move_fd(p[1], 3) != 0) child_fail("result pipe");
    exec_requester(rargv);
  }
  close(p[1]);
  /* The terminal's Ctrl-C is for the requester (it cancels the pending grant, exits 130). Ctrl-Z
   * stops both of us (the shim holds nothing while it waits), and `fg` continues both. */
  set_ignore(SIGINT, 1);
  set_ignore(SIGQUIT, 1);
  ssize_t n = read_result(p[0], token, MAX_TOKEN + 1, v);
  if (v->early) retire_early(v); /* no READY before the result: not adopted, never idle past it */
  close(p[0]); /* a requester still writing gets EPIPE instead of blocking us */
  /* A token, not a reason code: the verifier gets it while the requester's runtime shuts down (a few
   * ms more on the path otherwise); its exit is collected before the command runs (finish_requester). */
  int token_first = n > 0 && jwt_shaped(token, (size_t)n);
  st = n == -2 ? -2 : token_first ? 0 : wait_requester(pid, v);
  if (token_first) A.requester = pid;
  set_ignore(SIGINT, 0);
  set_ignore(SIGQUIT, 0);
  free(rargv);

  if (st == -2)
    deny("verifier_timeout", EXIT_UNAVAILABLE, "not run: no token from the requester within %d s of its approval",
         VERIFY_DEADLINE_S);
  if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == EXIT_PENDING) {
    if (audit("pending", "") != 0) audit_failed();
    exit(EXIT_PENDING);
  }
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    int code = EXIT_DENIED;
    if (st != -1 && WIFEXITED(st)) code = WEXITSTATUS(st);
    if (st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGINT) code = EXIT_INTERRUPTED;
    /* A failing requester may leave one reason code in the pipe (never a token). It is the user's
     * own process, so the audit keeps it under a requester_ prefix and only in the reason charset. */
    static char reason[sizeof "requester_" + 64];
    strcpy(reason, "requester_failed");
    if (n > 0 && n <= 65) {
      if (token[n - 1] == '\n') n--;
      token[n] = '\0';
      if (reason_ok(token)) snprintf(reason, sizeof reason, "requester_%.64s", token);
    }
    deny(reason, code, "not run: the approval request did not succeed");
  }
  if (n <= 0 || n > MAX_TOKEN) deny("requester_failed", EXIT_DENIED, "not run: the requester returned no token");
  if (token[n - 1] == '\n') n--;
  token[n] = '\0';
  if (n == 0 || strspn(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") != (size_t)n)
    deny("requester_failed", EXIT_DENIED, "not run: the requester returned a malformed token");
  return token;
}

/* A requester that delivered its token must still have succeeded: exit 0 within the verifier's
 * deadline (the same bound as before it delivered), or nothing runs. */
static void finish_requester(const struct verifier_proc *v) {
  if (!A.requester) return;
  int st = wait_requester(A.requester, v);
  A.requester = 0;
  if (st == -2)
    deny("verifier_timeout", EXIT_UNAVAILABLE, "not run: the requester did not exit within %d s of its approval",
         VERIFY_DEADLINE_S);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    deny("requester_failed", EXIT_DENIED, "not run: the requester failed after it delivered its token");
}

static int reason_ok(const char *r) {
  return r && *r && strlen(r) <= 64 && strspn(r, "abcdefghijklmnopqrstuvwxyz0123456789_") == strlen(r);
}

/* Sends the request line to the resident verifier, or else to the started one; returns only when the
 * command is allowed. */
static void verify(struct verifier_proc *v, const char *token) {
  static char out[MAX_VERDICT + 1];
  struct buf req = {0};
  struct json_kv *kv = NULL;
  static struct conversation talk;
  int code, count = -1;

  buf_puts(&req, "{\"jwt\":");
  json_str(&req, token, strlen(token));
  buf_puts(&req, ",\"argv\":");
  json_argv(&req, A.cmd, A.ncmd);
  kv_str(&req, "cmd_hash", A.hash);
  kv_str(&req, "user", A.caller.name);
  buf_printf(&req, ",\"uid\":%lu", (unsigned long)A.caller.uid);
  kv_str(&req, "run_as", A.target.name);
  buf_puts(&req, "}\n");
  if (req.err) die(1, "out of memory");

  set_ignore(SIGPIPE, 1);
  talk = (struct conversation){.req = req.p, .reqlen = req.len, .out = out, .outmax = sizeof out};
  /* The resident answered at the start; if it no longer does, nothing was sent: a one-shot one now. */
  int rfd = v->resident ? resident_connect(v) : -1;
  if (rfd >= 0) {
    code = resident_converse(rfd, v->policy, v->policylen, &talk, v->deadline_ms);
  } else {
    v->resident = 0;
    start_verifier(v, 0);
    talk.in_fd = v->in_fd;
    talk.out_fd = v->out_fd;
    talk.err_fd = v->err_fd;
    int st = converse(v->pid, &talk, v->deadline_ms);
    code = st < 0 ? st : WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }
  close(v->cfd);
  size_t n = talk.outlen;
  buf_free(&req);
  forward_diag(talk.diag, talk.diaglen, talk.dropped);
  if (code == -2)
    deny("verifier_timeout", EXIT_UNAVAILABLE, "not run: the verifier did not finish within %d s (the IdP is too slow)",
         VERIFY_DEADLINE_S);

  if (n < sizeof out) {
    if (n > 0 && out[n - 1] == '\n') n--;
    count = json_parse_flat(out, n, &kv);
  }
  const char *reason = count >= 0 ? json_get_str(kv, count, "reason") : NULL;
  if (code == 0 && count >= 0 && json_get_bool(kv, count, "ok") == 1) {
    const char *h = json_get_str(kv, count, "cmd_hash"), *r = json_get_str(kv, count, "run_as");
    A.grant_id = json_get_str(kv, count, "grant_id");
    A.sub = json_get_str(kv, count, "sub");
    A.decided_by = json_get_str(kv, count, "decided_by");
    A.issuer = json_get_str(kv, count, "issuer");
    /* Allowed only for exactly this command and this target user. */
    if (!h || strcmp(h, A.hash) != 0 || !r || strcmp(r, A.target.name) != 0)
      deny("verdict_mismatch", EXIT_DENIED, "denied: the verifier approved a different command or user");
    if (!A.grant_id || !*A.grant_id) deny("verifier_failed", EXIT_DENIED, "denied: the verdict has no grant id");
    return; /* kv stays alive: A points into it until exec */
  }
  if (code == EXIT_UNAVAILABLE || code == EXIT_CONFIG) {
    if (!reason_ok(reason)) reason = code == EXIT_UNAVAILABLE ? "idp_unreachable" : "config_invalid";
    deny(reason, code, "not run: %s", reason);
  }
  if (!reason_ok(reason) || (code != 0 && code != EXIT_DENIED)) reason = "verifier_failed";
  deny(reason, EXIT_DENIED, "denied: %s", reason);
}

/* ---- the program of a command given as a path ---- */

/* A command with a '/' runs the path the approver saw: made canonical and absolute here, before the
 * hash and the request (the shim, not the caller's requester, decides what will be exec'd), and
 * refused when the caller could change what it names. argv[cmd_start] is replaced. */
static void canonical_command(int argc, char **argv, const struct elevation *el) {
  char *path;
  int bad;
  if (!strchr(A.cmd[0], '/')) return;
  switch (canonical_program(A.cmd[0], &path)) {
  case PROGRAM_OK: break;
  case PROGRAM_NOT_FOUND: deny("command_not_found", EXIT_NOT_FOUND, "%s: no such file, or not reachable for you", A.cmd[0]);
  case PROGRAM_NOT_FILE: deny("command_not_file", EXIT_CANNOT_EXEC, "%s: not a regular file", A.cmd[0]);
  case PROGRAM_WRITABLE:
    deny("command_writable", EXIT_DENIED,
         "refusing %s: you can change it (the file or a directory on its path), so what would run is not what was "
         "approved; install it where only root can write, e.g. /usr/local/bin",
         A.cmd[0]);
  case PROGRAM_ERROR: die(1, "cannot resolve %s: %s", A.cmd[0], strerror(errno));
  }
  argv[el->cmd_start] = path;
  if (elev_check_argv(argc, argv, el, &bad) != ARGV_OK) die(EXIT_USAGE, "the path of %s is not usable as argv", path);
  if (cmd_hash(A.cmd, A.ncmd, A.hash) != 0) die(1, "out of memory");
}

/* Right before exec: the approved path still names the same canonical, caller-proof file. */
static void recheck_command(void) {
  char *path;
  if (!strchr(A.cmd[0], '/')) return;
  int same = canonical_program(A.cmd[0], &path) == PROGRAM_OK && strcmp(path, A.cmd[0]) == 0;
  free(path);
  if (!same) deny("command_changed", EXIT_CANNOT_EXEC, "not run: %s changed since it was approved", A.cmd[0]);
}

/* ---- step 4: exec ---- */

/* CMD[0] without '/' is looked up in the fixed secure PATH only; with '/' it is the canonical path
 * canonical_command() made of it. */
static const char *resolve(const char *name, char *path, size_t size) {
  if (strchr(name, '/')) return name;
  const char *dir = SECURE_PATH;
  while (*dir) {
    size_t len = strcspn(dir, ":");
    struct stat st;
    int n = snprintf(path, size, "%.*s/%s", (int)len, dir, name);
    if (n > 0 && (size_t)n < size && stat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111))
      return path;
    dir += len + (dir[len] == ':');
  }
  return NULL;
}

/* Locale and terminal values are copied only when they cannot name a file (like sudo's env_check). */
static int env_value_ok(const char *v) {
  size_t n = strlen(v);
  if (n > 256 || strpbrk(v, "/%")) return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f) return 0;
  return 1;
}

static int env_name_ok(const char *e, size_t len) {
  static const char *const names[] = {"TERM", "LANG", "LANGUAGE"};
  for (size_t i = 0; i < 3; i++)
    if (strlen(names[i]) == len && strncmp(e, names[i], len) == 0) return 1;
  return len > 3 && len <= 32 && strncmp(e, "LC_", 3) == 0 && strspn(e + 3, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") == len - 3;
}

static void env_add(char **env, size_t *n, const char *name, const char *value) {
  if (asprintf(&env[*n], "%s=%s", name, value) < 0) die(1, "out of memory");
  (*n)++;
}

static char **build_env(const struct user *target, const char *grant_id) {
  extern char **environ;
  size_t n = 0, max = 7 + 32 + 1;
  char **env = calloc(max, sizeof *env);
  if (!env) die(1, "out of memory");
  env_add(env, &n, "HOME", target->home);
  env_add(env, &n, "USER", target->name);
  env_add(env, &n, "LOGNAME", target->name);
  env_add(env, &n, "SHELL", target->shell);
  env_add(env, &n, "PATH", SECURE_PATH);
  env_add(env, &n, "APES_USER", A.caller.name);
  env_add(env, &n, "APES_GRANT_ID", grant_id);
  for (char **e = environ; e && *e && n < max - 1; e++) {
    const char *eq = strchr(*e, '=');
    if (!eq || !env_name_ok(*e, (size_t)(eq - *e)) || !env_value_ok(eq + 1)) continue;
    int dup = 0;
    for (size_t i = 7; i < n; i++)
      if (strncmp(env[i], *e, (size_t)(eq - *e) + 1) == 0) dup = 1; /* first one wins, like getenv */
    if (!dup && !(env[n++] = strdup(*e))) die(1, "out of memory");
  }
  env[n] = NULL;
  return env;
}

static void run_command(void) __attribute__((noreturn));
static void run_command(void) {
  char buf[PATH_MAX];
  const char *path = resolve(A.cmd[0], buf, sizeof buf);
  if (!path) die(EXIT_NOT_FOUND, "%s: command not found in %s", A.cmd[0], SECURE_PATH);
  if (initgroups(A.target.name, A.target.gid) != 0 ||
      setresgid(A.target.gid, A.target.gid, A.target.gid) != 0 ||
      setresuid(A.target.uid, A.target.uid, A.target.uid) != 0 || !ids_are(A.target.uid, A.target.gid))
    die(EXIT_CANNOT_EXEC, "cannot become %s: %s", A.target.name, strerror(errno));
  char **env = build_env(&A.target, A.grant_id);
  if (caller_limits(1) != 0) die(EXIT_CANNOT_EXEC, "cannot restore the resource limits: %s", strerror(errno));
  reset_signals(); /* SIGPIPE was ignored while talking to the verifier */
  execve(path, A.cmd, env);
  int err = errno;
  die(err == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXEC, "%s: %s", A.cmd[0], strerror(err));
}

/* The caller's passwd entry, for the audit line and the requester. */
static void lookup_caller(void) {
  struct passwd *pw;
  errno = 0; /* "not found" may come with one of these (getpwuid(3)); anything else is a failure to look */
  if (!(pw = getpwuid(A.caller.uid)) && errno && errno != ENOENT && errno != ESRCH && errno != EBADF && errno != EPERM)
    die(1, "cannot read the passwd entry of uid %lu: %s", (unsigned long)A.caller.uid, strerror(errno));
  if (!pw || copy_user(pw, &A.caller) != 0)
    deny("caller_unknown", 1, "uid %lu has no passwd entry", (unsigned long)A.caller.uid);
}

/* UTF-8 and size limits; a refusal is audited without the argv it refuses. */
static void check_argv(int argc, char **argv, const struct elevation *el) {
  int bad;
  switch (elev_check_argv(argc, argv, el, &bad)) {
  case ARGV_OK: return;
  case ARGV_BAD_UTF8: deny("argv_invalid_utf8", EXIT_USAGE, "argument %d is not valid UTF-8: refusing to run it", bad);
  case ARGV_TOO_MANY: deny("argv_too_many", EXIT_USAGE, "the command has more than %d arguments", APES_MAX_CMD_ARGS);
  case ARGV_ARG_TOO_LONG:
    deny("argv_arg_too_long", EXIT_USAGE, "argument %d is longer than %d bytes", bad, APES_MAX_ARG_BYTES);
  case ARGV_CMD_TOO_LONG:
    deny("argv_too_long", EXIT_USAGE, "the command is longer than %d bytes", APES_MAX_CMD_BYTES);
  }
  die(1, "unexpected argv check result");
}

/* The policy, checked before anyone is asked to approve: a command that cannot be verified is refused
 * up front. Only root may be able to put a file there (every directory from / checked), and it is
 * opened without blocking (a FIFO or device in its place cannot hang us) and checked on the fd, which
 * is what the verifier reads, so the check cannot go stale. */
static int open_policy(void) {
  char bad[PATH_MAX];
  struct stat st;
  if (parents_trusted(APES_CONFIG, bad, sizeof bad) != 0) {
    if (errno == ENOENT)
      deny("config_missing", EXIT_CONFIG, "no policy at %s: set one up with `sudo apes trust ...`", APES_CONFIG);
    deny("config_insecure", EXIT_CONFIG, "%s must be a directory owned by root and writable only by root (or sticky)",
         bad);
  }
  int fd = open(APES_CONFIG, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT)
    deny("config_missing", EXIT_CONFIG, "no policy at %s: set one up with `sudo apes trust ...`", APES_CONFIG);
  if (fd < 0 && errno != ELOOP) die(EXIT_CONFIG, "cannot open %s: %s", APES_CONFIG, strerror(errno));
  if (fd < 0 || fstat(fd, &st) != 0 || !file_trusted(&st))
    deny("config_insecure", EXIT_CONFIG, "%s must be a regular file owned by root, not group- or world-writable",
         APES_CONFIG);
  return fd;
}

int main(int argc, char **argv) {
  struct elevation el;
  struct user verifier;
  struct passwd *pw;

  sane_stdio();
  if (argc < 1 || !argv[0]) die(EXIT_USAGE, "called without argv[0]");
  check_exec();
  if (!elev_parse(argc, argv, &el)) run_unprivileged(argv);

  /* ---- 1. sanity: still only argv and fixed paths, no other input ---- */
  if (geteuid() != 0) die(EXIT_CONFIG, "not installed setuid root, so it cannot elevate: run `sudo make install`");
  closefrom(3);
  reset_signals();
  umask(022);
  shim_limits();
  A.caller.uid = getuid(); /* who asks: the real uid, never a name from the environment */
  A.target.name = (char *)el.run_as;
  audit_open(); /* from here on every exit leaves an audit line */
  lookup_caller();
  check_argv(argc, argv, &el);
  A.cmd = argv + el.cmd_start;
  A.ncmd = (size_t)(argc - el.cmd_start);
  if (cmd_hash(A.cmd, A.ncmd, A.hash) != 0) die(1, "out of memory");
  if (!(pw = getpwnam(el.run_as)) || copy_user(pw, &A.target) != 0)
    deny("run_as_unknown", EXIT_USAGE, "no such user: %s", el.run_as);
  if (!(pw = getpwnam(VERIFY_USER)) || pw->pw_uid == 0 || copy_user(pw, &verifier) != 0)
    deny("verifier_missing", EXIT_CONFIG, "the verifier user %s is missing: run `sudo make install`", VERIFY_USER);
  canonical_command(argc, argv, &el);
  struct verifier_proc v = {.cfd = open_policy(), .user = &verifier, .slot = -1};
  if (!resident_answers(&v) && (v.slot = take_slot(A.caller.uid)) >= 0)
    start_verifier(&v, 1); /* early, idle-bounded: its start-up overlaps the requester's */

  /* ---- 2. requester, as the caller ---- */
  const char *token = request_token(argc, argv, &el, &v);
  start_verifier(&v, 0); /* a token without READY before it: now */

  /* ---- 3. verifier, as _apes; returns only when allowed. The attempt is on disk before it can
   * consume the grant, so a consumed grant always has a line, and a log that cannot take one more
   * line stops us here, before anything is spent. ---- */
  if (audit("attempt", "") != 0) audit_failed();
  verify(&v, token);

  /* ---- 4. audit, then exec; no audit line, no command ---- */
  finish_requester(&v);
  recheck_command();
  if (audit("allow", "") != 0) audit_failed();
  run_command();
}
