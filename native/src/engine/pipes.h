// Kernel pipes: sizing under the per-user pipe budget, and a per-worker pool so that a connection holds
// a pipe only while bytes are in it (idle keep-alive connections hold none, as in HAProxy).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kstreams {
namespace engine {

struct Pipe {
  int rd = -1, wr = -1;
  uint32_t capacity = 0;  // F_GETPIPE_SZ
  // Slots (pages) of the pipe. Every slot holds at least one byte, so a splice into an empty pipe that
  // returns fewer bytes than it has slots cannot have filled it: the socket's receive queue was drained.
  size_t slots = 0;
  size_t bytes = 0;  // bytes queued in it, as this engine counts them
  uint32_t wanted = 0;  // the capacity asked for: a pipe the budget kept smaller is not pooled
  bool held() const { return rd >= 0; }
};

// Asks for `want` bytes of pipe; returns the pipe's effective size, which is smaller when the kernel
// refused (EPERM: without CAP_SYS_RESOURCE, once the uid's pipes exceed fs.pipe-user-pages-soft - a
// budget shared by every process of that uid on the node - no pipe may grow, and new pipes get 2 slots).
uint32_t ResizePipe(int fd, uint32_t want);
// The size F_SETPIPE_SZ gives for `size`: a power of two pages (fs/pipe.c round_pipe_size).
uint64_t RoundPipeSize(uint64_t size);
// /proc/sys/fs/pipe-max-size, or 0 when it cannot be read.
uint64_t PipeMaxSize();

// Checks once that pipes of `size` can be had at all: 0 and *effective set, or an errno. A size above
// fs.pipe-max-size without CAP_SYS_RESOURCE is refused forever (EPERM); a refusal within it is the
// per-user budget, used up for now (maybe by other sidecars of the node): accepted, connections degrade.
int ProbePipeSize(uint32_t size, uint32_t* effective);

// One worker's pipes. Not thread-safe: each worker has its own.
class PipePool {
 public:
  ~PipePool();
  // A pipe of capacity `want` (rounded as the kernel rounds), from the pool or new. Its capacity may be
  // smaller when the kernel refuses to enlarge it (the caller decides whether that is enough); false
  // when no pipe could be created (errno set: ENFILE, EMFILE, ENOMEM, or fs.pipe-user-pages-hard).
  bool Take(uint32_t want, Pipe* out);
  // Gives back an empty pipe (bytes == 0); a pipe that may still hold bytes, or that is smaller than it
  // was asked to be, is closed instead.
  void Give(Pipe* p);
  // Closes a pipe whatever it holds.
  void Discard(Pipe* p);
  // Grows a held pipe (bytes in it stay) to `want`; false when the kernel refused (the uid's budget is
  // used up) and the pipe keeps its size. A grown pipe pools at its new size.
  bool Grow(Pipe* p, uint32_t want);

  size_t inUse() const { return inUse_; }
  uint64_t inUseBytes() const { return inUseBytes_; }
  size_t pooled() const { return free_.size(); }
  uint64_t pooledBytes() const { return pooledBytes_; }

 private:
  // Idle pipes kept per worker: enough to absorb the churn of busy connections, few enough that the pool
  // itself is a small share of the node's per-uid pipe budget.
  static constexpr size_t kMaxPooled = 16;
  void DropPooled();
  // ResizePipe, once more after dropping the idle pipes when the budget refused.
  uint32_t ResizeMakingRoom(int fd, uint32_t rounded);
  std::vector<Pipe> free_;
  size_t inUse_ = 0;
  uint64_t inUseBytes_ = 0, pooledBytes_ = 0;
};

}  // namespace engine
}  // namespace kstreams
