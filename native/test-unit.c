/* C unit tests of the shim's pure parts, run under ASan/UBSan by `make native-test`:
 * UTF-8 validation, JSON escaping, cmd_hash, the elevation grammar, argv limits, the verdict parser,
 * which files and directories the shim trusts, the audit lock's deadline, and the conversation with
 * a child (the verifier's), and the checked unix-socket connect. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "elev.h"
#include "json.h"
#include "proc.h"
#include "resident.h"
#include "secure.h"
#include "sha256.h"
#include "sock.h"
#include "utf8.h"
#include "warm.h"

static int failures, checks;

#define CHECK(cond)                                                    \
  do {                                                                 \
    checks++;                                                          \
    if (!(cond)) {                                                     \
      failures++;                                                      \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                  \
  } while (0)

static int valid(const char *s, size_t n) { return utf8_valid((const unsigned char *)s, n); }

static void test_utf8(void) {
  CHECK(valid("", 0));
  CHECK(valid("plain ascii \x7f", 13));
  CHECK(valid("\xc3\xa9", 2));                  /* é */
  CHECK(valid("\xe2\x80\xa8\xe2\x80\xa9", 6));  /* U+2028 U+2029 */
  CHECK(valid("\xf0\x9f\x90\x92", 4));          /* 🐒 */
  CHECK(valid("\xf4\x8f\xbf\xbf", 4));          /* U+10FFFF */
  CHECK(valid("\xed\x9f\xbf", 3));              /* U+D7FF */
  CHECK(valid("\xee\x80\x80", 3));              /* U+E000 */
  CHECK(!valid("\xc0\xaf", 2));                 /* overlong '/' */
  CHECK(!valid("\xc1\xbf", 2));                 /* overlong */
  CHECK(!valid("\xe0\x80\xaf", 3));             /* overlong 3-byte */
  CHECK(!valid("\xf0\x80\x80\xaf", 4));         /* overlong 4-byte */
  CHECK(!valid("\xed\xa0\x80", 3));             /* U+D800 */
  CHECK(!valid("\xed\xbf\xbf", 3));             /* U+DFFF */
  CHECK(!valid("\xf4\x90\x80\x80", 4));         /* U+110000 */
  CHECK(!valid("\xf5\x80\x80\x80", 4));
  CHECK(!valid("\xff", 1));
  CHECK(!valid("\x80", 1));                     /* lone continuation */
  CHECK(!valid("\xc3", 1));                     /* truncated */
  CHECK(!valid("\xe2\x80", 2));
  CHECK(!valid("\xf0\x9f\x90", 3));
  CHECK(!valid("a\xc3(", 3));                   /* bad continuation */
  unsigned char out[4];
  uint32_t cp;
  for (uint32_t c = 1; c <= 0x10FFFF; c += (c < 0x3000 ? 1 : 97)) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    size_t n = utf8_encode(c, out);
    if (utf8_seq(out, n, &cp) != n || cp != c) {
      CHECK(0 && "utf8 round trip");
      break;
    }
  }
}

static void escaped(const char *in, size_t n, const char *want) {
  struct buf b = {0};
  json_str(&b, in, n);
  CHECK(!b.err && strcmp(b.p, want) == 0);
  if (b.p && strcmp(b.p, want) != 0) fprintf(stderr, "  got %s want %s\n", b.p, want);
  buf_free(&b);
}

static void test_escape(void) {
  escaped("", 0, "\"\"");
  escaped("a b", 3, "\"a b\"");
  escaped("\"\\", 2, "\"\\\"\\\\\"");
  escaped("\b\f\n\r\t", 5, "\"\\b\\f\\n\\r\\t\"");
  escaped("\x01\x1b\x1f\x0b", 4, "\"\\u0001\\u001b\\u001f\\u000b\"");
  escaped("\x7f/", 2, "\"\x7f/\"");
  escaped("\xe2\x80\xa8\xf0\x9f\x90\x92", 7, "\"\xe2\x80\xa8\xf0\x9f\x90\x92\"");
  escaped("a\xc0\xafz", 4, "\"a\\ufffd\\ufffdz\""); /* invalid bytes cannot leak into JSON */
  struct buf b = {0};
  char *argv[] = {"a", "b c", "", "\""};
  json_argv(&b, argv, 4);
  CHECK(b.p && strcmp(b.p, "[\"a\",\"b c\",\"\",\"\\\"\"]") == 0);
  buf_free(&b);
}

static void test_hash(void) {
  struct sha256 c;
  unsigned char d[32];
  char h[CMD_HASH_LEN];
  sha256_init(&c);
  sha256_update(&c, "abc", 3);
  sha256_final(&c, d);
  CHECK(d[0] == 0xba && d[1] == 0x78 && d[31] == 0xad);
  /* Values from node: "SHA-256:"+sha256(JSON.stringify(argv)) */
  char *a1[] = {"a", "b c"};
  CHECK(cmd_hash(a1, 2, h) == 0 &&
        strcmp(h, "SHA-256:8c76884296cd4981663dd1413a7bca4fc5d6020ae2b47c2be5f6a535c1a3b892") == 0);
  char *a2[] = {"a b"};
  char h2[CMD_HASH_LEN];
  CHECK(cmd_hash(a2, 1, h2) == 0 && strcmp(h, h2) != 0);
  /* a long input crosses many blocks and the padding boundary */
  char *big = malloc(200000);
  memset(big, 'x', 199999);
  big[199999] = 0;
  char *a3[] = {big};
  CHECK(cmd_hash(a3, 1, h) == 0 && strlen(h) == 72);
  free(big);
}

static int parse(int argc, char **argv, struct elevation *e) { return elev_parse(argc, argv, e); }

static void test_grammar(void) {
  struct elevation e;
  char *g1[] = {"apes", "--reason", "R", "--", "ls", "-l"};
  CHECK(parse(6, g1, &e) && e.opt_start == 1 && e.opt_end == 3 && e.cmd_start == 4 && strcmp(e.run_as, "root") == 0);
  char *g2[] = {"apes", "run", "--as=bob", "--json", "--json", "--no-wait", "--", "id"};
  CHECK(parse(8, g2, &e) && e.opt_start == 2 && e.cmd_start == 7 && strcmp(e.run_as, "bob") == 0);
  char *g3[] = {"apes", "--", "ls"};
  CHECK(parse(3, g3, &e) && e.cmd_start == 2);
  char *g4[] = {"apes", "--reason", "--", "ls"}; /* --reason takes "--" as its value */
  CHECK(!parse(4, g4, &e));
  char *g5[] = {"apes", "--reason", "--", "--", "ls"};
  CHECK(parse(5, g5, &e) && e.cmd_start == 4);
  char *g6[] = {"apes", "--as", "a", "--as", "b", "--", "ls"}; /* twice: not an elevation */
  CHECK(!parse(7, g6, &e));
  char *g7[] = {"apes", "--reason", "x", "--"}; /* empty CMD */
  CHECK(!parse(4, g7, &e));
  char *g8[] = {"apes", "--reason", "x", "ls"}; /* no -- */
  CHECK(!parse(4, g8, &e));
  char *g9[] = {"apes", "--version"};
  CHECK(!parse(2, g9, &e));
  char *g10[] = {"apes", "--json=1", "--", "ls"}; /* flags take no value */
  CHECK(!parse(4, g10, &e));
  char *g11[] = {"apes", "grants", "list", "--", "x"};
  CHECK(!parse(5, g11, &e));
  char *g12[] = {"apes", "--reason"};
  CHECK(!parse(2, g12, &e));
  char *g13[] = {"apes", "--as=", "--", "ls"};
  CHECK(parse(4, g13, &e) && strcmp(e.run_as, "") == 0);
  char *g14[] = {"apes", "--", "--", "x"};
  CHECK(parse(4, g14, &e) && e.cmd_start == 2);
  char *g15[] = {"apes", "--json", "run", "--", "x"}; /* run only first */
  CHECK(!parse(5, g15, &e));
  char *g16[] = {"apes", "--reasons", "x", "--", "ls"};
  CHECK(!parse(5, g16, &e));
  char *g17[] = {"apes", "run"};
  CHECK(!parse(2, g17, &e));
  CHECK(!parse(1, g9, &e));
  CHECK(!parse(0, g9, &e));
}

static void test_limits(void) {
  struct elevation e;
  int bad;
  char *ok[] = {"apes", "--reason", "r", "--", "ls"};
  CHECK(parse(5, ok, &e) && elev_check_argv(5, ok, &e, &bad) == ARGV_OK);
  char *u[] = {"apes", "--reason", "\xff", "--", "ls"};
  CHECK(parse(5, u, &e) && elev_check_argv(5, u, &e, &bad) == ARGV_BAD_UTF8 && bad == 2);
  char *big = malloc(APES_MAX_ARG_BYTES + 2);
  memset(big, 'a', APES_MAX_ARG_BYTES + 1);
  big[APES_MAX_ARG_BYTES] = 0; /* exactly at the limit: fine */
  char *l1[] = {"apes", "--", big};
  CHECK(parse(3, l1, &e) && elev_check_argv(3, l1, &e, &bad) == ARGV_OK);
  big[APES_MAX_ARG_BYTES] = 'a';
  big[APES_MAX_ARG_BYTES + 1] = 0;
  CHECK(elev_check_argv(3, l1, &e, &bad) == ARGV_ARG_TOO_LONG);
  big[APES_MAX_ARG_BYTES] = 0;
  char **many = calloc(APES_MAX_CMD_ARGS + 3, sizeof *many);
  many[0] = "apes";
  many[1] = "--";
  for (int i = 0; i < APES_MAX_CMD_ARGS + 1; i++) many[2 + i] = "x";
  CHECK(parse(APES_MAX_CMD_ARGS + 2, many, &e) && elev_check_argv(APES_MAX_CMD_ARGS + 2, many, &e, &bad) == ARGV_OK);
  CHECK(parse(APES_MAX_CMD_ARGS + 3, many, &e) &&
        elev_check_argv(APES_MAX_CMD_ARGS + 3, many, &e, &bad) == ARGV_TOO_MANY);
  for (int i = 0; i < 9; i++) many[2 + i] = big; /* 9 * 32 KiB > 256 KiB */
  CHECK(parse(11, many, &e) && elev_check_argv(11, many, &e, &bad) == ARGV_CMD_TOO_LONG);
  CHECK(parse(10, many, &e) && elev_check_argv(10, many, &e, &bad) == ARGV_OK); /* 8 * 32 KiB = 256 KiB */
  free(many);
  free(big);
}

static int flat(const char *s, struct json_kv **kv) { return json_parse_flat(s, strlen(s), kv); }

static void test_verdict(void) {
  struct json_kv *kv;
  int n = flat("{\"ok\":true,\"grant_id\":\"g\",\"cmd_hash\":\"SHA-256:ab\",\"run_as\":\"root\"}", &kv);
  CHECK(n == 4 && json_get_bool(kv, n, "ok") == 1 && strcmp(json_get_str(kv, n, "run_as"), "root") == 0 &&
        json_get_str(kv, n, "ok") == NULL && json_get_str(kv, n, "missing") == NULL);
  json_kv_free(kv, n);
  n = flat(" \t\r\n{ \"ok\" : false , \"reason\" : \"token_expired\" } \n", &kv);
  CHECK(n == 2 && json_get_bool(kv, n, "ok") == 0 && json_get_bool(kv, n, "reason") == -1);
  json_kv_free(kv, n);
  n = flat("{}", &kv);
  CHECK(n == 0);
  json_kv_free(kv, n);
  n = flat("{\"s\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\udc12\\u2028\"}", &kv);
  CHECK(n == 1 && strcmp(json_get_str(kv, n, "s"), "\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x90\x92\xe2\x80\xa8") == 0);
  json_kv_free(kv, n);
  static const char *const bad[] = {
      "",
      "{",
      "[]",
      "{\"ok\":true",
      "{\"ok\":true}x",
      "{\"ok\":true}{}",
      "{\"ok\":1}",
      "{\"ok\":null}",
      "{\"ok\":{}}",
      "{\"ok\":[]}",
      "{\"ok\":tru}",
      "{\"ok\":True}",
      "{\"ok\":true,}",
      "{,}",
      "{\"a\":\"x\",\"a\":\"y\"}",
      "{\"a\" \"x\"}",
      "{a:\"x\"}",
      "{'a':'x'}",
      "{\"a\":\"x\ny\"}",
      "{\"a\":\"\\x\"}",
      "{\"a\":\"\\u12\"}",
      "{\"a\":\"\\u0000\"}",
      "{\"a\":\"\\ud800\"}",
      "{\"a\":\"\\udc00\"}",
      "{\"a\":\"\\ud800\\u0041\"}",
      "{\"a\":\"\xc0\xaf\"}",
      "{\"a\":\"\xed\xa0\x80\"}",
      "{\"a\":\"x\"} \x01",
      "{\"a\":\"unterminated}",
      "{\"a\":\"x\\",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int r = flat(bad[i], &kv);
    if (r >= 0) fprintf(stderr, "  accepted: %s\n", bad[i]);
    CHECK(r == -1 && kv == NULL);
  }
  CHECK(json_parse_flat("{\"a\":\"b\"}\0", 10, &kv) == -1); /* embedded NUL after the object */
  struct buf many = {0};
  buf_putc(&many, '{');
  for (int i = 0; i <= JSON_MAX_KEYS; i++) buf_printf(&many, "%s\"k%d\":true", i ? "," : "", i);
  buf_putc(&many, '}');
  CHECK(json_parse_flat(many.p, many.len, &kv) == -1);
  buf_free(&many);
}

static int trusted(int (*check)(const struct stat *), mode_t mode, uid_t uid) {
  struct stat st;
  memset(&st, 0, sizeof st);
  st.st_mode = mode;
  st.st_uid = uid;
  return check(&st);
}

static void test_trust(void) {
  CHECK(trusted(dir_trusted, S_IFDIR | 0755, 0));
  CHECK(trusted(dir_trusted, S_IFDIR | 0700, 0));
  CHECK(trusted(dir_trusted, S_IFDIR | 01777, 0)); /* /tmp: sticky */
  CHECK(trusted(dir_trusted, S_IFDIR | 01770, 0));
  CHECK(!trusted(dir_trusted, S_IFDIR | 0775, 0));
  CHECK(!trusted(dir_trusted, S_IFDIR | 0757, 0));
  CHECK(!trusted(dir_trusted, S_IFDIR | 0755, 1000)); /* its owner can swap entries */
  CHECK(!trusted(dir_trusted, S_IFDIR | 01777, 1000));
  CHECK(!trusted(dir_trusted, S_IFREG | 0755, 0));
  CHECK(!trusted(dir_trusted, S_IFLNK | 0777, 0));
  CHECK(trusted(file_trusted, S_IFREG | 0600, 0));
  CHECK(trusted(file_trusted, S_IFREG | 0644, 0));
  CHECK(!trusted(file_trusted, S_IFREG | 0620, 0));
  CHECK(!trusted(file_trusted, S_IFREG | 0602, 0));
  CHECK(!trusted(file_trusted, S_IFREG | 0600, 1000));
  CHECK(!trusted(file_trusted, S_IFIFO | 0600, 0));
  CHECK(!trusted(file_trusted, S_IFDIR | 0700, 0));

  char bad[4096], dir[] = "/tmp/apes-unit-XXXXXX", path[4200];
  CHECK(parents_trusted("relative/file", bad, sizeof bad) == -1 && errno == EINVAL);
  CHECK(parents_trusted("/etc/passwd", bad, sizeof bad) == 0 || geteuid() != 0);
  if (!mkdtemp(dir)) {
    CHECK(0 && "mkdtemp");
    return;
  }
  snprintf(path, sizeof path, "%s/sub/file", dir);
  CHECK(parents_trusted(path, bad, sizeof bad) == -1); /* sub is missing */
  snprintf(path, sizeof path, "%s/sub", dir);
  CHECK(mkdir(path, 0755) == 0);
  snprintf(path, sizeof path, "%s/sub/file", dir);
  if (geteuid() == 0) { /* root owns what it makes: the modes decide */
    CHECK(chmod(dir, 0755) == 0);
    CHECK(parents_trusted(path, bad, sizeof bad) == 0);
    CHECK(chmod(dir, 0777) == 0);
    CHECK(parents_trusted(path, bad, sizeof bad) == -1 && errno == EPERM && strcmp(bad, dir) == 0);
    CHECK(chmod(dir, 01777) == 0);
    CHECK(parents_trusted(path, bad, sizeof bad) == 0);
    char link[4200], target[4200];
    snprintf(link, sizeof link, "%s/link", dir);
    snprintf(target, sizeof target, "%s/sub", dir);
    CHECK(symlink(target, link) == 0);
    snprintf(path, sizeof path, "%s/link/file", dir);
    CHECK(parents_trusted(path, bad, sizeof bad) == -1 && errno == ELOOP && strcmp(bad, link) == 0);
    unlink(link);
  } else { /* not root: its own directories are never trusted */
    CHECK(parents_trusted(path, bad, sizeof bad) == -1 && errno == EPERM && strcmp(bad, dir) == 0);
  }
  snprintf(path, sizeof path, "%s/sub", dir);
  rmdir(path);
  rmdir(dir);
}

static void test_lock(void) {
  char file[] = "/tmp/apes-unit-lock-XXXXXX";
  int a = mkstemp(file), b = a >= 0 ? open(file, O_RDWR) : -1;
  if (a < 0 || b < 0) {
    CHECK(0 && "lock file");
    return;
  }
  unlink(file);
  struct timespec t0, t1;
  CHECK(lock_within(a, 100) == 0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  CHECK(lock_within(b, 100) == -1 && errno == EWOULDBLOCK); /* another open file description holds it */
  clock_gettime(CLOCK_MONOTONIC, &t1);
  CHECK(t1.tv_sec - t0.tv_sec < 30); /* it gave up instead of blocking */
  CHECK(flock(a, LOCK_UN) == 0);
  CHECK(lock_within(b, 100) == 0);
  close(a);
  close(b);
}

/* A child that answers, closes its pipes, then exits only later: the verdict and the exit status are
 * both collected (the exit is waited for through a pidfd, not a 50 ms look); one that outlives the
 * deadline is killed and reported as -2. */
static pid_t conversing_child(int linger_ms, int status, struct conversation *c) {
  int in[2], out[2], err[2];
  if (pipe(in) != 0 || pipe(out) != 0 || pipe(err) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    char line[64];
    close(in[1]);
    close(out[0]);
    close(err[0]);
    ssize_t n = read(in[0], line, sizeof line);
    if (n > 0 && write(out[1], "{\"ok\":true}\n", 12) != 12) _exit(99);
    if (write(err[1], "diag", 4) != 4) _exit(98);
    close(out[1]);
    close(err[1]);
    struct timespec ts = {linger_ms / 1000, (long)(linger_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    _exit(status);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  static char outbuf[64];
  *c = (struct conversation){.in_fd = in[1], .out_fd = out[0], .err_fd = err[0], .req = "{}\n", .reqlen = 3,
                             .out = outbuf, .outmax = sizeof outbuf};
  return pid;
}

static void test_converse(void) {
  static struct conversation c;
  pid_t pid = conversing_child(200, 7, &c);
  CHECK(pid > 0);
  int st = converse(pid, &c, now_ms() + 10000);
  CHECK(st != -1 && st != -2 && WIFEXITED(st) && WEXITSTATUS(st) == 7);
  CHECK(c.outlen == 12 && memcmp(c.out, "{\"ok\":true}\n", 12) == 0);
  CHECK(c.diaglen == 4 && memcmp(c.diag, "diag", 4) == 0);
  CHECK(waitpid(pid, NULL, WNOHANG) == -1 && errno == ECHILD); /* reaped */

  pid = conversing_child(30000, 0, &c); /* lingers past the deadline: killed and reaped */
  CHECK(pid > 0);
  st = converse(pid, &c, now_ms() + 300);
  CHECK(st == -2);
  CHECK(waitpid(pid, NULL, WNOHANG) == -1 && errno == ECHILD);
}

/* A listening socket at dir/name; its fd. */
static int listen_at(const char *dir, const char *name) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof a.sun_path, "%s/%s", dir, name);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 1) != 0) return -1;
  return fd;
}

static void test_sock(void) {
  char dir[] = "/tmp/apes-test-sock-XXXXXX", path[256], link[300];
  uid_t me = getuid();
  CHECK(mkdtemp(dir) != NULL);
  int l = listen_at(dir, "s.sock");
  CHECK(l >= 0);
  int fd = sock_connect_owned(dir, "s.sock", me);
  CHECK(fd >= 0);
  CHECK(fd >= 0 && !(fcntl(fd, F_GETFL) & O_NONBLOCK) && (fcntl(fd, F_GETFD) & FD_CLOEXEC));
  /* A write to a reader that never reads ends at the deadline, not in a hang. */
  static char big[1 << 20];
  long long t0 = now_ms();
  errno = 0;
  CHECK(fd >= 0 && send_all(fd, big, sizeof big, now_ms() + 100) == -1 && errno == ETIMEDOUT);
  CHECK(now_ms() - t0 < 5000);
  if (fd >= 0) close(fd);

  errno = 0;
  CHECK(sock_connect_owned(dir, "s.sock", me + 1) == -1 && errno == EPERM); /* not the owner's */
  errno = 0;
  CHECK(sock_connect_owned(dir, "none.sock", me) == -1 && errno == ENOENT);
  errno = 0;
  CHECK(sock_connect_owned(dir, "../s.sock", me) == -1 && errno == EINVAL);
  CHECK(chmod(dir, 0710) == 0);
  errno = 0;
  CHECK(sock_connect_owned(dir, "s.sock", me) == -1 && errno == EPERM); /* group bits on the directory */
  CHECK(chmod(dir, 0700) == 0);
  snprintf(link, sizeof link, "%s-link", dir);
  CHECK(symlink(dir, link) == 0);
  errno = 0;
  CHECK(sock_connect_owned(link, "s.sock", me) == -1 && errno == EPERM); /* the directory as a symlink */
  unlink(link);
  snprintf(path, sizeof path, "%s/file.sock", dir);
  int f = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  CHECK(f >= 0);
  if (f >= 0) close(f);
  errno = 0;
  CHECK(sock_connect_owned(dir, "file.sock", me) == -1 && errno == EPERM); /* not a socket */
  unlink(path);
  close(l); /* the file stays, nobody listens */
  errno = 0;
  CHECK(sock_connect_owned(dir, "s.sock", me) == -1 && errno == ECONNREFUSED);
  snprintf(path, sizeof path, "%s/s.sock", dir);
  unlink(path);
  /* A socket file that is the owner's, but the process listening on it is not: the peer check. */
  if (geteuid() == 0) {
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t pid = fork();
    if (pid == 0) {
      struct sockaddr_un a = {.sun_family = AF_UNIX};
      snprintf(a.sun_path, sizeof a.sun_path, "%s/s.sock", dir);
      int s2 = socket(AF_UNIX, SOCK_STREAM, 0);
      if (s2 < 0 || bind(s2, (struct sockaddr *)&a, sizeof a) != 0 || setresuid(65534, 65534, 65534) != 0 ||
          listen(s2, 1) != 0)
        _exit(1);
      if (write(ready[1], "x", 1) != 1) _exit(1);
      pause();
      _exit(0);
    }
    char c;
    close(ready[1]);
    CHECK(read(ready[0], &c, 1) == 1);
    close(ready[0]);
    errno = 0;
    CHECK(sock_connect_owned(dir, "s.sock", me) == -1 && errno == EPERM);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    unlink(path);
  }
  rmdir(dir);
}

static int split(const char *s, size_t *v, int *code, size_t *d) { return resident_answer_split(s, strlen(s), v, code, d); }

static int greeted(const char *what, long long ms) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -9;
  if (*what && write(sv[1], what, strlen(what)) < 0) return -9;
  int r = sock_greeted(sv[0], now_ms() + ms);
  char rest[8] = {0};
  if (r == 0 && strlen(what) > 6) {
    if (read(sv[0], rest, sizeof rest - 1) != (ssize_t)strlen(what) - 6 || strcmp(rest, what + 6) != 0) r = -8;
  }
  close(sv[0]);
  close(sv[1]);
  return r;
}

static void test_resident(void) {
  CHECK(greeted("ready\n", 1000) == 0);
  CHECK(greeted("ready\nX", 1000) == 0); /* what follows the greeting stays in the socket */
  CHECK(greeted("busy\n", 1000) == -1);
  CHECK(greeted("rea", 100) == -1);       /* cut short: the deadline */
  CHECK(greeted("", 100) == -1);
  CHECK(greeted("READY\n", 1000) == -1);
  size_t v = 0, d = 0;
  int code = -1;
  CHECK(split("{\"ok\":true}\nexit 0\n", &v, &code, &d) == 0 && v == 11 && code == 0 && d == 19);
  CHECK(split("{}\nexit 77\napes: not allowed\n", &v, &code, &d) == 0 && v == 2 && code == 77 && d == 11);
  CHECK(split("{}\nexit 255\n", &v, &code, &d) == 0 && code == 255);
  CHECK(split("{}\nexit 256\n", &v, &code, &d) == -1);   /* not an exit status */
  CHECK(split("{}\nexit 077\n", &v, &code, &d) == -1);   /* a leading zero */
  CHECK(split("{}\nexit -1\n", &v, &code, &d) == -1);
  CHECK(split("{}\nexit 0", &v, &code, &d) == -1);        /* cut before its newline */
  CHECK(split("{}\nexit \n", &v, &code, &d) == -1);
  CHECK(split("{}\nexits 0\n", &v, &code, &d) == -1);
  CHECK(split("{}", &v, &code, &d) == -1);                 /* no verdict line end */
  CHECK(split("{}\nexit 10000\n", &v, &code, &d) == -1);

  /* A whole conversation over a socket pair with a forked answerer: what it got, what we got. */
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    char in[256];
    size_t got = 0;
    ssize_t r;
    /* "policy 3\nabc" + "{}\n" = 15 bytes, then the answer. */
    while (got < 15 && (r = read(sv[1], in + got, sizeof in - got)) > 0) got += (size_t)r;
    int ok = got == 15 && memcmp(in, "policy 3\nabc{}\n", 15) == 0;
    const char *ans = ok ? "{\"ok\":false}\nexit 77\ndiag\n" : "bad\nexit 1\n";
    if (write(sv[1], ans, strlen(ans)) < 0) _exit(1);
    _exit(0);
  }
  close(sv[1]);
  static char out[128];
  struct conversation c = {.req = "{}\n", .reqlen = 3, .out = out, .outmax = sizeof out};
  CHECK(resident_converse(sv[0], "abc", 3, &c, now_ms() + 5000) == 77);
  CHECK(c.outlen == 13 && memcmp(out, "{\"ok\":false}\n", 13) == 0);
  CHECK(c.diaglen == 5 && memcmp(c.diag, "diag\n", 5) == 0);
  waitpid(pid, NULL, 0);

  /* An answerer that never answers: the deadline, not a hang. */
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  struct conversation c2 = {.req = "{}\n", .reqlen = 3, .out = out, .outmax = sizeof out};
  CHECK(resident_converse(sv[0], "abc", 3, &c2, now_ms() + 100) == -2);
  close(sv[1]);
  /* One that closes without a whole answer. */
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  CHECK(write(sv[1], "{\"ok\":true}\n", 12) == 12);
  close(sv[1]);
  struct conversation c3 = {.req = "{}\n", .reqlen = 3, .out = out, .outmax = sizeof out};
  CHECK(resident_converse(sv[0], "abc", 3, &c3, now_ms() + 5000) == -1);
}

static int hdr(const char *s, int *fd, long *len) { return warm_frame_header(s, strlen(s), fd, len); }

static void test_warm(void) {
  int fd = -9;
  long len = -9;
  CHECK(hdr("2 17", &fd, &len) == 0 && fd == 2 && len == 17);
  CHECK(hdr("3 0", &fd, &len) == 0 && fd == 3 && len == 0);
  CHECK(hdr("1 1048576", &fd, &len) == 0 && fd == 1 && len == 1048576);
  CHECK(hdr("close 3", &fd, &len) == 0 && fd == 3 && len == -1);
  CHECK(hdr("exit 75", &fd, &len) == 0 && fd == 0 && len == 75);
  CHECK(hdr("exit 256", &fd, &len) == -1);
  CHECK(hdr("1 1048577", &fd, &len) == -1); /* larger than a frame may be */
  CHECK(hdr("4 1", &fd, &len) == -1);       /* only fds 1, 2 and 3 */
  CHECK(hdr("0 1", &fd, &len) == -1);
  CHECK(hdr("2 01", &fd, &len) == -1);
  CHECK(hdr("2 -1", &fd, &len) == -1);
  CHECK(hdr("2 ", &fd, &len) == -1);
  CHECK(hdr("2  1", &fd, &len) == -1);
  CHECK(hdr("close 2", &fd, &len) == -1);
  CHECK(hdr("exit", &fd, &len) == -1);
  CHECK(hdr("", &fd, &len) == -1);

  /* The digest: what is on the list (and every APES_*) changes it, anything else does not. */
  char a[65], b[65];
  char *e1[] = {"HOME=/home/x", "APES_IDP=https://a", "PWD=/tmp", NULL};
  char *e2[] = {"PWD=/srv", "APES_IDP=https://a", "HOME=/home/x", "OLDPWD=/", NULL};
  char *e3[] = {"HOME=/home/y", "APES_IDP=https://a", NULL};
  char *e4[] = {"HOME=/home/x", "APES_IDP=https://b", NULL};
  char *e5[] = {"HOME=/home/x", "APES_IDP=https://a", "APES_DEBUG=1", NULL};
  char *e6[] = {"HOME=/home/x", "APES_IDP=https://a", "XDG_CONFIG_HOME=", NULL}; /* empty is not unset */
  CHECK(warm_digest(e1, "1:2:3:4.5", a) == 0 && warm_digest(e2, "1:2:3:4.5", b) == 0 && strcmp(a, b) == 0);
  CHECK(strlen(a) == 64);
  CHECK(warm_digest(e3, "1:2:3:4.5", b) == 0 && strcmp(a, b) != 0);
  CHECK(warm_digest(e4, "1:2:3:4.5", b) == 0 && strcmp(a, b) != 0);
  CHECK(warm_digest(e5, "1:2:3:4.5", b) == 0 && strcmp(a, b) != 0);
  CHECK(warm_digest(e6, "1:2:3:4.5", b) == 0 && strcmp(a, b) != 0);
  CHECK(warm_digest(e1, "1:2:3:4.6", b) == 0 && strcmp(a, b) != 0); /* another executable */

  char dir[256], name[64];
  char *off[] = {"APES_KEEP_WARM=0s", NULL}, *on[] = {"APES_KEEP_WARM=10m", NULL};
  char *xdg[] = {"XDG_RUNTIME_DIR=/", NULL}; /* not the caller's (uid 12345): /tmp/apes-<uid> then */
  CHECK(warm_socket(off, 12345, "x", dir, sizeof dir, name, sizeof name) == -1);
  CHECK(warm_socket(on, 12345, "x", dir, sizeof dir, name, sizeof name) == 0 && strcmp(dir, "/tmp/apes-12345") == 0);
  CHECK(strncmp(name, "requester-", 10) == 0 && strlen(name) == 10 + 32 + 5);
  CHECK(warm_socket(xdg, 12345, "x", dir, sizeof dir, name, sizeof name) == 0 && strcmp(dir, "/tmp/apes-12345") == 0);
  CHECK(warm_socket(xdg, 0, "x", dir, sizeof dir, name, sizeof name) == 0 && strcmp(dir, "//apes") == 0);
  CHECK(warm_socket(on, 12345, "x", dir, 8, name, sizeof name) == -1); /* does not fit */
}

int main(void) {
  test_utf8();
  test_escape();
  test_hash();
  test_grammar();
  test_limits();
  test_verdict();
  test_trust();
  test_lock();
  test_converse();
  test_sock();
  test_resident();
  test_warm();
  printf("native unit tests: %d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
