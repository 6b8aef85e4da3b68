// Helpers shared by the bench load generators: address parsing, connect with retry, exact reads/writes.
#ifndef KS_BENCH_COMMON_H
#define KS_BENCH_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static inline double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void die(const char *what) {
  fprintf(stderr, "%s: %s\n", what, strerror(errno));
  exit(1);
}

static inline void make_addr(const char *host, int port, struct sockaddr_in *sa) {
  memset(sa, 0, sizeof(*sa));
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) {
    fprintf(stderr, "not an IPv4 address: %s\n", host);
    exit(1);
  }
}

// Proxies start asynchronously; retrying on ECONNREFUSED lets the bench use the tool itself as the
// readiness probe, so a path is known to work end to end before it is measured.
static inline int connect_retry(const char *host, int port, int retry_ms) {
  struct sockaddr_in sa;
  make_addr(host, port, &sa);
  double deadline = now_seconds() + retry_ms / 1000.0;
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) return fd;
    int err = errno;
    close(fd);
    if ((err != ECONNREFUSED && err != ECONNRESET) || now_seconds() > deadline) {
      errno = err;
      fprintf(stderr, "connect %s:%d: %s\n", host, port, strerror(err));
      exit(1);
    }
    usleep(10000);
  }
}

static inline int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

// Returns bytes read (< len only at EOF) or -1.
static inline ssize_t read_full(int fd, char *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd, buf + got, len - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) break;
    got += (size_t)n;
  }
  return (ssize_t)got;
}

static inline void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

#endif
