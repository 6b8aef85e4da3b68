#include "pipes.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

namespace kstreams {
namespace engine {

namespace {

size_t PageSize() {
  static const size_t page = size_t(sysconf(_SC_PAGESIZE));
  return page;
}

void CloseBoth(Pipe* p) {
  if (p->rd >= 0) close(p->rd);
  if (p->wr >= 0) close(p->wr);
  *p = Pipe{};
}

}  // namespace

uint32_t ResizePipe(int fd, uint32_t want) {
  int r = fcntl(fd, F_SETPIPE_SZ, int(want));
  if (r >= 0) return uint32_t(r);
  r = fcntl(fd, F_GETPIPE_SZ);
  return r > 0 ? uint32_t(r) : 0;
}

uint64_t RoundPipeSize(uint64_t size) {
  uint64_t r = PageSize();
  while (r < size) r <<= 1;
  return r;
}

uint64_t PipeMaxSize() {
  int fd = open("/proc/sys/fs/pipe-max-size", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[32] = "";
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? strtoull(buf, nullptr, 10) : 0;
}

int ProbePipeSize(uint32_t size, uint32_t* effective) {
  int probe[2];
  if (pipe2(probe, O_CLOEXEC) != 0) return errno;
  int got = fcntl(probe[0], F_SETPIPE_SZ, int(size));
  int err = errno;
  close(probe[0]);
  close(probe[1]);
  if (got >= 0) {
    *effective = uint32_t(got);
    return 0;
  }
  uint64_t rounded = RoundPipeSize(size), max = PipeMaxSize();
  if (err != EPERM || max == 0 || rounded > max || rounded > (1u << 31)) return err;
  *effective = uint32_t(rounded);
  return 0;
}

PipePool::~PipePool() {
  for (Pipe& p : free_) CloseBoth(&p);
}

bool PipePool::Take(uint32_t want, Pipe* out) {
  uint32_t rounded = uint32_t(RoundPipeSize(want));
  // Newest first: its pages are the likeliest to be warm. Exact sizes only: a connection's batches are
  // bounded by its pipe's capacity, and a mirror pipe is sized against them.
  for (size_t i = free_.size(); i-- > 0;) {
    if (free_[i].capacity != rounded) continue;
    *out = free_[i];
    free_.erase(free_.begin() + long(i));
    pooledBytes_ -= out->capacity;
    inUse_++;
    inUseBytes_ += out->capacity;
    return true;
  }
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    // Out of fds: idle pooled pipes (of other sizes) hold some; a connection with bytes to move comes first.
    if ((errno != EMFILE && errno != ENFILE) || free_.empty()) return false;
    DropPooled();
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
  }
  Pipe p;
  p.rd = fds[0];
  p.wr = fds[1];
  p.wanted = rounded;
  p.capacity = ResizeMakingRoom(p.rd, rounded);
  p.slots = p.capacity / PageSize();
  *out = p;
  inUse_++;
  inUseBytes_ += p.capacity;
  return true;
}

void PipePool::Give(Pipe* p) {
  if (!p->held()) return;
  inUse_--;
  inUseBytes_ -= p->capacity;
  if (p->bytes != 0 || p->capacity != p->wanted || free_.size() >= kMaxPooled) {
    CloseBoth(p);
    return;
  }
  pooledBytes_ += p->capacity;
  free_.push_back(*p);
  *p = Pipe{};
}

uint32_t PipePool::ResizeMakingRoom(int fd, uint32_t rounded) {
  uint32_t got = ResizePipe(fd, rounded);
  if (got < rounded && !free_.empty()) {
    // The uid's pipe budget is used up, and idle pipes in the pool count against it: a connection with
    // bytes to move needs the pages more than the pool does.
    DropPooled();
    got = ResizePipe(fd, rounded);
  }
  return got;
}

bool PipePool::Grow(Pipe* p, uint32_t want) {
  uint32_t rounded = uint32_t(RoundPipeSize(want));
  if (!p->held() || p->capacity >= rounded) return p->held();
  uint32_t got = ResizeMakingRoom(p->rd, rounded);
  if (got <= p->capacity) return false;
  inUseBytes_ += got - p->capacity;
  p->capacity = got;
  p->slots = got / PageSize();
  p->wanted = rounded;
  return got >= rounded;
}

void PipePool::DropPooled() {
  for (Pipe& p : free_) CloseBoth(&p);
  free_.clear();
  pooledBytes_ = 0;
}

void PipePool::Discard(Pipe* p) {
  if (!p->held()) return;
  inUse_--;
  inUseBytes_ -= p->capacity;
  CloseBoth(p);
}

}  // namespace engine
}  // namespace kstreams
