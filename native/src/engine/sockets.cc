#include "sockets.h"

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

namespace kstreams {
namespace engine {

void CloseFd(int& fd) {
  if (fd >= 0) {
    close(fd);
    fd = -1;
  }
}

bool CloseWithReset(int& fd) {
  if (fd < 0) return true;
  linger l{1, 0};
  bool ok = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0;
  CloseFd(fd);
  return ok;
}

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void SetOobInline(int fd) {
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &one, sizeof one);
}

int MoveUrgentByte(int fd, int pipeWr) {
  int atMark = 0;
  if (ioctl(fd, SIOCATMARK, &atMark) != 0) return -1;
  if (!atMark) return 0;
  char b;
  ssize_t n = recv(fd, &b, 1, MSG_DONTWAIT);
  if (n != 1) return n == 0 || errno == EAGAIN ? 0 : -1;
  return write(pipeWr, &b, 1) == 1 ? 1 : -1;
}

uint64_t UnsentBytes(int fd) {
  int n = 0;
  if (fd < 0 || ioctl(fd, SIOCOUTQ, &n) != 0 || n < 0) return 0;
  return uint64_t(n);
}

int ConnectError(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return -1;
  return err;
}

bool EnterNetns(const std::string& path, const char** syscall) {
  int nsfd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (nsfd < 0) {
    *syscall = "open";
    return false;
  }
  if (setns(nsfd, CLONE_NEWNET) != 0) {
    int e = errno;
    close(nsfd);
    errno = e;
    *syscall = "setns";
    return false;
  }
  close(nsfd);
  return true;
}

uint64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

}  // namespace engine
}  // namespace kstreams
