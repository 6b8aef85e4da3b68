// Load generators of the transform bench. Unlike ks-bulk/ks-server they send a given block of bytes (dense
// with what the ops look for) and check what arrives against the expected output, so a path that does not
// transform, or transforms wrongly, fails its measurement instead of being reported as fast.
//
//   xform-load send HOST PORT BYTES --block FILE [--retry-ms N]
//       writes BYTES (a multiple of the block's size) made of the block repeated, in 256 KiB writes,
//       half-closes, waits for the sink's 16-byte answer (bytes received, offset of the first byte that
//       differed from the expected stream or all ones). Prints {"bytes","ackBytes","mismatchAt","seconds",
//       "cpuSeconds"}; exits 3 when the count or the content is wrong.
//   xform-load sink PORT [--expect FILE] [--no-ack]
//       reads each connection to EOF in 1 MiB reads, compares it with FILE repeated (no FILE: counts only),
//       answers as above unless --no-ack (the mirror sink). Prints "conn BYTES MISMATCH_AT" per connection
//       (MISMATCH_AT -1: none).
//   xform-load rr HOST PORT COUNT --request FILE --reply FILE [--conns N] [--warmup N] [--retry-ms N]
//       N connections (threads), each sends the request and reads a reply of FILE's size, COUNT timed round
//       trips after N warm-up ones; every reply is compared with FILE (the reply direction is never
//       transformed). Prints {"count","conns","seconds","rps","p50Us","p99Us","p999Us","maxUs",
//       "replyMismatches"}; exits 3 on a wrong reply.
//   xform-load rr-server PORT --request-size N [--expect FILE] [--reply FILE]
//       per connection: reads requests of N bytes, compares each with FILE, answers each with the reply
//       file (no --reply: never answers, the mirror target). Prints "conn BYTES REQUESTS MISMATCHES".
// Servers listen on 127.0.0.1:PORT (0: a free port) and print "listening PORT" once ready.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "common.h"

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

struct blob {
  char *data;
  size_t len;
};

static struct blob load(const char *path) {
  struct blob b = {NULL, 0};
  if (!path) return b;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die(path);
  struct stat st;
  if (fstat(fd, &st) < 0) die("fstat");
  b.len = (size_t)st.st_size;
  b.data = malloc(b.len ? b.len : 1);
  if (!b.data) die("malloc");
  if (read_full(fd, b.data, b.len) != (ssize_t)b.len) die("read");
  close(fd);
  if (b.len == 0) {
    fprintf(stderr, "%s is empty\n", path);
    exit(2);
  }
  return b;
}

static const char *flag(int argc, char **argv, int from, const char *name) {
  for (int i = from; i < argc; i++)
    if (strcmp(argv[i], name) == 0) return i + 1 < argc ? argv[i + 1] : "";
  return NULL;
}

static int has(int argc, char **argv, int from, const char *name) {
  for (int i = from; i < argc; i++)
    if (strcmp(argv[i], name) == 0) return 1;
  return 0;
}

static int listen_on(int port) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) die("socket");
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in sa;
  make_addr("127.0.0.1", port, &sa);
  if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0) die("bind");
  if (listen(lfd, 1024) < 0) die("listen");
  socklen_t len = sizeof(sa);
  getsockname(lfd, (struct sockaddr *)&sa, &len);
  printf("listening %d\n", ntohs(sa.sin_port));
  fflush(stdout);
  return lfd;
}

static void serve(int lfd, void *(*fn)(void *)) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      die("accept");
    }
    pthread_t t;
    if (pthread_create(&t, &attr, fn, (void *)(intptr_t)fd) != 0) die("pthread_create");
  }
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         (double)ru.ru_stime.tv_usec / 1e6;
}

// ---- bulk ----

static int cmd_send(int argc, char **argv) {
  if (argc < 5) return 2;
  const char *host = argv[2];
  int port = atoi(argv[3]);
  uint64_t bytes = strtoull(argv[4], NULL, 10);
  const char *retry = flag(argc, argv, 5, "--retry-ms");
  struct blob block = load(flag(argc, argv, 5, "--block"));
  if (!block.data) {
    fprintf(stderr, "send needs --block FILE\n");
    return 2;
  }
  if (bytes % block.len != 0) {
    fprintf(stderr, "BYTES (%llu) must be a multiple of the block's %zu bytes\n", (unsigned long long)bytes, block.len);
    return 2;
  }
  // Whole blocks per write, about 256 KiB: the stream is the block repeated, whatever the write size.
  size_t per = (256 * 1024) / block.len;
  if (per == 0) per = 1;
  size_t chunk = per * block.len;
  char *buf = malloc(chunk);
  if (!buf) die("malloc");
  for (size_t i = 0; i < per; i++) memcpy(buf + i * block.len, block.data, block.len);

  int fd = connect_retry(host, port, retry ? atoi(retry) : 0);
  double t0 = now_seconds();
  for (uint64_t left = bytes; left > 0;) {
    size_t n = left < chunk ? (size_t)left : chunk;
    if (write_all(fd, buf, n) < 0) die("write");
    left -= n;
  }
  if (shutdown(fd, SHUT_WR) < 0) die("shutdown");
  uint64_t ans[2] = {0, 0};
  ssize_t r = read_full(fd, (char *)ans, sizeof(ans));
  double t1 = now_seconds();
  if (r != (ssize_t)sizeof(ans)) {
    fprintf(stderr, "no answer from the sink (read %zd bytes): the path closed before the reply\n", r);
    return 3;
  }
  printf("{\"bytes\":%llu,\"ackBytes\":%llu,\"mismatchAt\":%lld,\"seconds\":%.6f,\"cpuSeconds\":%.6f}\n",
         (unsigned long long)bytes, (unsigned long long)ans[0], ans[1] == UINT64_MAX ? -1LL : (long long)ans[1], t1 - t0,
         cpu_seconds());
  fflush(stdout);
  close(fd);
  if (ans[0] != bytes) fprintf(stderr, "the sink got %llu of %llu bytes\n", (unsigned long long)ans[0], (unsigned long long)bytes);
  if (ans[1] != UINT64_MAX) fprintf(stderr, "the sink got a wrong byte at offset %llu\n", (unsigned long long)ans[1]);
  return ans[0] == bytes && ans[1] == UINT64_MAX ? 0 : 3;
}

static struct blob expect;
static int ack = 1;

// Offset of the first byte of s[0, n) that differs from the expected stream at stream offset `at`, or -1.
static long long first_mismatch(const char *s, size_t n, uint64_t at) {
  size_t off = (size_t)(at % expect.len), done = 0;
  while (done < n) {
    size_t k = expect.len - off < n - done ? expect.len - off : n - done;
    if (memcmp(s + done, expect.data + off, k) != 0) {
      for (size_t i = 0; i < k; i++)
        if (s[done + i] != expect.data[off + i]) return (long long)(at + done + i);
    }
    done += k;
    off = 0;
  }
  return -1;
}

static void *sink_conn(void *arg) {
  int fd = (int)(intptr_t)arg;
  size_t cap = 1 << 20;
  char *buf = malloc(cap);
  if (!buf) die("malloc");
  uint64_t total = 0, mismatch = UINT64_MAX;
  for (;;) {
    ssize_t n = read(fd, buf, cap);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (n == 0) break;
    if (expect.data && mismatch == UINT64_MAX) {
      long long m = first_mismatch(buf, (size_t)n, total);
      if (m >= 0) mismatch = (uint64_t)m;
    }
    total += (uint64_t)n;
  }
  if (ack) {
    uint64_t ans[2] = {total, mismatch};  // little-endian on x86 and arm64, as the sender reads it
    write_all(fd, (const char *)ans, sizeof(ans));
  }
  close(fd);
  free(buf);
  pthread_mutex_lock(&out_lock);
  printf("conn %llu %lld\n", (unsigned long long)total, mismatch == UINT64_MAX ? -1LL : (long long)mismatch);
  fflush(stdout);
  pthread_mutex_unlock(&out_lock);
  return NULL;
}

static int cmd_sink(int argc, char **argv) {
  if (argc < 3) return 2;
  expect = load(flag(argc, argv, 3, "--expect"));
  ack = !has(argc, argv, 3, "--no-ack");
  serve(listen_on(atoi(argv[2])), sink_conn);
  return 0;
}

// ---- request/response ----

static struct blob request, reply;
static size_t request_size;

struct rr_thread {
  pthread_t t;
  const char *host;
  int port, retry_ms, warmup, count;
  uint64_t *lat;
  int mismatches;
};

static void *rr_client(void *arg) {
  struct rr_thread *r = arg;
  int fd = connect_retry(r->host, r->port, r->retry_ms);
  set_nodelay(fd);
  char *got = malloc(reply.len);
  if (!got) die("malloc");
  for (int i = 0; i < r->warmup + r->count; i++) {
    uint64_t t0 = now_ns();
    if (write_all(fd, request.data, request.len) < 0) die("write");
    if (read_full(fd, got, reply.len) != (ssize_t)reply.len) {
      fprintf(stderr, "connection closed after %d round trips\n", i);
      exit(3);
    }
    if (i >= r->warmup) r->lat[i - r->warmup] = now_ns() - t0;
    if (memcmp(got, reply.data, reply.len) != 0) r->mismatches++;
  }
  // Half-close and wait for the server's close: the connection ends cleanly through the path.
  shutdown(fd, SHUT_WR);
  while (read(fd, got, reply.len) > 0) {
  }
  close(fd);
  free(got);
  return NULL;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static int cmd_rr(int argc, char **argv) {
  if (argc < 5) return 2;
  request = load(flag(argc, argv, 5, "--request"));
  reply = load(flag(argc, argv, 5, "--reply"));
  if (!request.data || !reply.data) {
    fprintf(stderr, "rr needs --request FILE and --reply FILE\n");
    return 2;
  }
  const char *c = flag(argc, argv, 5, "--conns"), *w = flag(argc, argv, 5, "--warmup"), *rm = flag(argc, argv, 5, "--retry-ms");
  int conns = c ? atoi(c) : 1, count = atoi(argv[4]);
  if (conns < 1 || count < 1) return 2;
  struct rr_thread *th = calloc((size_t)conns, sizeof(*th));
  uint64_t *lat = malloc(sizeof(uint64_t) * (size_t)conns * (size_t)count);
  if (!th || !lat) die("malloc");
  double t0 = now_seconds();
  for (int i = 0; i < conns; i++) {
    th[i] = (struct rr_thread){.host = argv[2], .port = atoi(argv[3]), .retry_ms = rm ? atoi(rm) : 0,
                               .warmup = w ? atoi(w) : 0, .count = count, .lat = lat + (size_t)i * (size_t)count};
    if (pthread_create(&th[i].t, NULL, rr_client, &th[i]) != 0) die("pthread_create");
  }
  int mismatches = 0;
  for (int i = 0; i < conns; i++) {
    pthread_join(th[i].t, NULL);
    mismatches += th[i].mismatches;
  }
  double secs = now_seconds() - t0;
  size_t n = (size_t)conns * (size_t)count;
  qsort(lat, n, sizeof(*lat), cmp_u64);
  double mean = 0;
  for (size_t i = 0; i < n; i++) mean += (double)lat[i];
  mean /= (double)n;
  // rps over the timed and warm-up round trips alike: all of them were in flight during `secs`.
  double total = (double)conns * (double)(count + (w ? atoi(w) : 0));
#define PCT(p) ((double)lat[(size_t)((double)(n - 1) * (p))] / 1e3)
  printf("{\"count\":%zu,\"conns\":%d,\"seconds\":%.6f,\"rps\":%.1f,\"meanUs\":%.2f,\"p50Us\":%.2f,\"p99Us\":%.2f,"
         "\"p999Us\":%.2f,\"maxUs\":%.2f,\"replyMismatches\":%d}\n",
         n, conns, secs, total / secs, mean / 1e3, PCT(0.5), PCT(0.99), PCT(0.999), (double)lat[n - 1] / 1e3, mismatches);
  fflush(stdout);
  if (mismatches) fprintf(stderr, "%d replies differed from the reply sent: the reply direction was changed\n", mismatches);
  return mismatches ? 3 : 0;
}

static void *rr_conn(void *arg) {
  int fd = (int)(intptr_t)arg;
  set_nodelay(fd);
  char *buf = malloc(request_size);
  if (!buf) die("malloc");
  uint64_t total = 0, requests = 0, mismatches = 0;
  for (;;) {
    ssize_t n = read_full(fd, buf, request_size);
    if (n <= 0) break;
    total += (uint64_t)n;
    if ((size_t)n < request_size) break;
    requests++;
    if (expect.data && (expect.len != request_size || memcmp(buf, expect.data, request_size) != 0)) mismatches++;
    if (reply.data && write_all(fd, reply.data, reply.len) < 0) break;
  }
  close(fd);
  free(buf);
  pthread_mutex_lock(&out_lock);
  printf("conn %llu %llu %llu\n", (unsigned long long)total, (unsigned long long)requests, (unsigned long long)mismatches);
  fflush(stdout);
  pthread_mutex_unlock(&out_lock);
  return NULL;
}

static int cmd_rr_server(int argc, char **argv) {
  if (argc < 3) return 2;
  const char *rs = flag(argc, argv, 3, "--request-size");
  request_size = rs ? strtoull(rs, NULL, 10) : 0;
  if (request_size == 0) {
    fprintf(stderr, "rr-server needs --request-size N\n");
    return 2;
  }
  expect = load(flag(argc, argv, 3, "--expect"));
  reply = load(flag(argc, argv, 3, "--reply"));
  serve(listen_on(atoi(argv[2])), rr_conn);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  int rc = 2;
  if (argc >= 2 && strcmp(argv[1], "send") == 0) rc = cmd_send(argc, argv);
  else if (argc >= 2 && strcmp(argv[1], "sink") == 0) rc = cmd_sink(argc, argv);
  else if (argc >= 2 && strcmp(argv[1], "rr") == 0) rc = cmd_rr(argc, argv);
  else if (argc >= 2 && strcmp(argv[1], "rr-server") == 0) rc = cmd_rr_server(argc, argv);
  if (rc == 2)
    fprintf(stderr,
            "usage: xform-load send HOST PORT BYTES --block FILE [--retry-ms N]\n"
            "       xform-load sink PORT [--expect FILE] [--no-ack]\n"
            "       xform-load rr HOST PORT COUNT --request FILE --reply FILE [--conns N] [--warmup N] [--retry-ms N]\n"
            "       xform-load rr-server PORT --request-size N [--expect FILE] [--reply FILE]\n");
  return rc;
}
