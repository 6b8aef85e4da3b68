// Bulk sender: ks-bulk HOST PORT BYTES [--retry-ms N] [--chunk BYTES]
// Connects (retrying while the path starts), writes BYTES, half-closes, and waits for ks-server's 8-byte
// count: the elapsed time covers every byte reaching the server, not just leaving this socket buffer.
// Prints one JSON line {"bytes","ackBytes","seconds","cpuSeconds"}; exits 3 when the server counted something else
// (a proxy lost or invented bytes), so a broken path can never be reported as a fast one.
#include <sys/resource.h>

#include "common.h"

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: ks-bulk HOST PORT BYTES [--retry-ms N] [--chunk BYTES]\n");
    return 2;
  }
  const char *host = argv[1];
  int port = atoi(argv[2]);
  uint64_t bytes = strtoull(argv[3], NULL, 10);
  int retry_ms = 0;
  size_t chunk = 256 * 1024;
  for (int i = 4; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--retry-ms") == 0) retry_ms = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--chunk") == 0) chunk = strtoull(argv[i + 1], NULL, 10);
  }
  char *buf = malloc(chunk);
  if (!buf) die("malloc");
  for (size_t i = 0; i < chunk; i++) buf[i] = (char)(i * 131 + 7);

  int fd = connect_retry(host, port, retry_ms);
  double t0 = now_seconds();
  uint64_t left = bytes;
  while (left > 0) {
    size_t n = left < chunk ? (size_t)left : chunk;
    if (write_all(fd, buf, n) < 0) die("write");
    left -= n;
  }
  if (shutdown(fd, SHUT_WR) < 0) die("shutdown");
  uint64_t got = 0;
  ssize_t r = read_full(fd, (char *)&got, sizeof(got));
  double t1 = now_seconds();
  if (r != (ssize_t)sizeof(got)) {
    fprintf(stderr, "no byte count from the server (read %zd bytes%s%s): the path closed before the reply\n", r,
            r < 0 ? ": " : "", r < 0 ? strerror(errno) : "");
    return 3;
  }
  // The sender's own CPU (user + system, including softirq work done in its context on loopback): part
  // of the cost of the path that the bench adds up per process.
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
               (double)ru.ru_stime.tv_usec / 1e6;
  printf("{\"bytes\":%llu,\"ackBytes\":%llu,\"seconds\":%.6f,\"cpuSeconds\":%.6f}\n", (unsigned long long)bytes,
         (unsigned long long)got, t1 - t0, cpu);
  fflush(stdout);
  close(fd);
  return got == bytes ? 0 : 3;
}
