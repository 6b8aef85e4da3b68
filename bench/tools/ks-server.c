// The bench's server side, one thread per connection so concurrent connections never wait on each other.
//   ks-server sink PORT [--no-ack]   read and count until EOF; then (unless --no-ack) send the count back
//                                    as 8 bytes, so the client's clock stops only when every byte arrived.
//                                    --no-ack is the mirror sink: mirrors are write-only.
//   ks-server sink PORT --no-ack --discard
//                                    the mirror sink: splice()s what arrives into /dev/null, so it costs
//                                    next to no CPU and keeps up with any mirror on a 2-core machine; a
//                                    sink that copied every byte would compete with the path for CPU and
//                                    get mirrors cut for its own slowness.
//   ks-server echo PORT              echo every byte (the 64 B request/response server, and the mirror
//                                    target of that load: a mirror target that answers, as a staging copy
//                                    of the app does, so the engine's turn pacing sees its answers).
// Listens on 127.0.0.1:PORT (0 = a free port). Prints "listening PORT" once ready and "conn BYTES" per
// finished connection (bytes received), so the bench can check what a mirror target really received.
#include <fcntl.h>
#include <pthread.h>

#include "common.h"

static int ack = 1;
static int discard = 0;
static int devnull = -1;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void *sink_conn(void *arg) {
  int fd = (int)(intptr_t)arg;
  // Large reads keep the receiver cheap: it must never be the slowest part of a bulk path.
  size_t cap = 1 << 20;
  char *buf = malloc(cap);
  if (!buf) die("malloc");
  uint64_t total = 0;
  int p[2] = {-1, -1};
  if (discard) {
    if (pipe2(p, O_CLOEXEC) < 0) die("pipe2");
    fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
    for (;;) {
      ssize_t n = splice(fd, NULL, p[1], NULL, 1 << 20, SPLICE_F_MOVE);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      total += (uint64_t)n;
      for (ssize_t left = n; left > 0;) {
        ssize_t m = splice(p[0], NULL, devnull, NULL, (size_t)left, SPLICE_F_MOVE);
        if (m < 0 && errno == EINTR) continue;
        if (m <= 0) die("splice to /dev/null");
        left -= m;
      }
    }
    close(p[0]);
    close(p[1]);
  }
  for (; !discard;) {
    ssize_t n = read(fd, buf, cap);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (n == 0) break;
    total += (uint64_t)n;
  }
  if (ack) {
    uint64_t le = total;  // x86 and arm64 are little-endian; the client reads the same layout
    write_all(fd, (const char *)&le, sizeof(le));
  }
  close(fd);
  free(buf);
  pthread_mutex_lock(&out_lock);
  printf("conn %llu\n", (unsigned long long)total);
  fflush(stdout);
  pthread_mutex_unlock(&out_lock);
  return NULL;
}

static void *echo_conn(void *arg) {
  int fd = (int)(intptr_t)arg;
  char buf[65536];
  uint64_t total = 0;
  set_nodelay(fd);
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (n == 0) break;
    total += (uint64_t)n;
    if (write_all(fd, buf, (size_t)n) < 0) break;
  }
  close(fd);
  pthread_mutex_lock(&out_lock);
  printf("conn %llu\n", (unsigned long long)total);
  fflush(stdout);
  pthread_mutex_unlock(&out_lock);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: ks-server sink|echo PORT [--no-ack] [--discard]\n");
    return 2;
  }
  int echo = strcmp(argv[1], "echo") == 0;
  if (!echo && strcmp(argv[1], "sink") != 0) {
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
  }
  for (int i = 3; i < argc; i++)
    if (strcmp(argv[i], "--no-ack") == 0) ack = 0;
    else if (strcmp(argv[i], "--discard") == 0) discard = 1;
  if (discard && (devnull = open("/dev/null", O_WRONLY | O_CLOEXEC)) < 0) die("open /dev/null");

  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  if (lfd < 0) die("socket");
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in sa;
  make_addr("127.0.0.1", atoi(argv[2]), &sa);
  if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0) die("bind");
  if (listen(lfd, 1024) < 0) die("listen");
  socklen_t len = sizeof(sa);
  getsockname(lfd, (struct sockaddr *)&sa, &len);
  printf("listening %d\n", ntohs(sa.sin_port));
  fflush(stdout);

  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  for (;;) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      die("accept");
    }
    pthread_t t;
    if (pthread_create(&t, &attr, echo ? echo_conn : sink_conn, (void *)(intptr_t)fd) != 0) die("pthread_create");
  }
}
