// When to accept: a worker accepts only connections it can set up, and stops polling the listener for a
// moment when the process is out of file descriptors, instead of spinning or accepting only to reset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kstreams {
namespace engine {

// Errors that mean "no fd or memory for a new connection now", not "this connection is bad".
bool IsResourceShortage(int err);

class AcceptGate {
 public:
  // Accepts per listener wake-up, so one busy listener does not starve established connections.
  static constexpr int kBatch = 64;
  // Out of file descriptors, stop polling the (level-triggered) listener this long: pending connections
  // wait in the backlog until fds free up (nginx disables accept events the same way, for 500 ms).
  static constexpr uint64_t kPauseMs = 100;

  ~AcceptGate() { Release(); }
  // fds held in reserve and released just after an accept, so that an accepted connection always has
  // the fds for its setup (the upstream socket, a few mirror sockets, and the pipes its first bytes
  // take). Without it, at the edge of RLIMIT_NOFILE accept4() succeeds and the setup fails, and every
  // queued client would be accepted only to be reset. The classic "reserve fd" trick.
  bool Fill(int anyFd);
  void Release();

  bool paused() const { return paused_; }
  uint64_t resumeAt() const { return resumeAt_; }
  void Pause(uint64_t now) {
    paused_ = true;
    resumeAt_ = now + kPauseMs;
  }
  void Resumed() { paused_ = false; }
  void Retry(uint64_t now) { resumeAt_ = now + kPauseMs; }

 private:
  static constexpr size_t kReserveFds = 8;
  std::vector<int> reserve_;
  bool paused_ = false;
  uint64_t resumeAt_ = 0;
};

}  // namespace engine
}  // namespace kstreams
