// Request/response latency: ks-rr HOST PORT COUNT [--conns C] [--size BYTES] [--warmup N] [--retry-ms N]
// C connections (threads, started together) each do COUNT round trips of SIZE bytes against ks-server echo:
// write SIZE, read SIZE, timed with CLOCK_MONOTONIC around each round trip. Prints one JSON line with
// percentiles over all round trips of all connections, in microseconds.
#include <math.h>
#include <pthread.h>

#include "common.h"

struct worker {
  pthread_t thread;
  int fd;
  long count;
  long warmup;
  size_t size;
  uint64_t *samples;
  int failed;
};

static pthread_barrier_t start_line;

static void *run(void *arg) {
  struct worker *w = arg;
  char out[65536], in[65536];
  memset(out, 'k', w->size);
  pthread_barrier_wait(&start_line);
  for (long i = -w->warmup; i < w->count; i++) {
    uint64_t t0 = now_ns();
    if (write_all(w->fd, out, w->size) < 0 || read_full(w->fd, in, w->size) != (ssize_t)w->size) {
      w->failed = 1;
      return NULL;
    }
    if (i >= 0) w->samples[i] = now_ns() - t0;
  }
  return NULL;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(const uint64_t *s, size_t n, double p) {
  size_t i = (size_t)ceil(p / 100.0 * (double)n);
  if (i > 0) i--;
  if (i >= n) i = n - 1;
  return (double)s[i] / 1000.0;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: ks-rr HOST PORT COUNT [--conns C] [--size BYTES] [--warmup N] [--retry-ms N]\n");
    return 2;
  }
  const char *host = argv[1];
  int port = atoi(argv[2]);
  long count = atol(argv[3]);
  int conns = 1, retry_ms = 0;
  long warmup = 100;
  size_t size = 64;
  for (int i = 4; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--conns") == 0) conns = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--size") == 0) size = strtoul(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--warmup") == 0) warmup = atol(argv[i + 1]);
    else if (strcmp(argv[i], "--retry-ms") == 0) retry_ms = atoi(argv[i + 1]);
  }
  if (count < 1 || conns < 1 || size < 1 || size > 65536) {
    fprintf(stderr, "COUNT and --conns must be >= 1, --size 1..65536\n");
    return 2;
  }
  struct worker *ws = calloc((size_t)conns, sizeof(*ws));
  uint64_t *all = malloc(sizeof(uint64_t) * (size_t)count * (size_t)conns);
  if (!ws || !all) die("malloc");
  pthread_barrier_init(&start_line, NULL, (unsigned)conns + 1);
  for (int c = 0; c < conns; c++) {
    ws[c].fd = connect_retry(host, port, retry_ms);
    set_nodelay(ws[c].fd);
    ws[c].count = count;
    ws[c].warmup = warmup;
    ws[c].size = size;
    ws[c].samples = all + (size_t)c * (size_t)count;
    if (pthread_create(&ws[c].thread, NULL, run, &ws[c]) != 0) die("pthread_create");
  }
  pthread_barrier_wait(&start_line);
  double t0 = now_seconds();
  int failed = 0;
  for (int c = 0; c < conns; c++) {
    pthread_join(ws[c].thread, NULL);
    failed |= ws[c].failed;
    close(ws[c].fd);
  }
  double seconds = now_seconds() - t0;
  if (failed) {
    fprintf(stderr, "a round trip failed: the path closed the connection or returned short replies\n");
    return 3;
  }
  size_t n = (size_t)count * (size_t)conns;
  double sum = 0;
  for (size_t i = 0; i < n; i++) sum += (double)all[i];
  qsort(all, n, sizeof(uint64_t), cmp_u64);
  printf("{\"count\":%zu,\"conns\":%d,\"size\":%zu,\"seconds\":%.6f,\"rps\":%.1f,\"meanUs\":%.2f,"
         "\"p50Us\":%.2f,\"p90Us\":%.2f,\"p99Us\":%.2f,\"p999Us\":%.2f,\"maxUs\":%.2f}\n",
         n, conns, size, seconds, (double)n / seconds, sum / (double)n / 1000.0, pct(all, n, 50),
         pct(all, n, 90), pct(all, n, 99), pct(all, n, 99.9), (double)all[n - 1] / 1000.0);
  return 0;
}
