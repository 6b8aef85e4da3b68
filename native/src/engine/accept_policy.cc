#include "accept_policy.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

namespace kstreams {
namespace engine {

bool IsResourceShortage(int err) { return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM; }

bool AcceptGate::Fill(int anyFd) {
  while (reserve_.size() < kReserveFds) {
    int fd = fcntl(anyFd, F_DUPFD_CLOEXEC, 0);  // any fd will do; a dup costs no memory
    if (fd < 0) return false;
    reserve_.push_back(fd);
  }
  return true;
}

void AcceptGate::Release() {
  for (int fd : reserve_) close(fd);
  reserve_.clear();
}

}  // namespace engine
}  // namespace kstreams
