// The file leg: a connection recorded by a capture (capture.h). Like a mirror leg it tee()s each batch of
// the primary pipe P, non-blocking, into a pipe of its own - two with responses, the app's batches of R
// going to the second - and never waits: the capture's writer thread moves the pipes into the files. A
// pipe too full for the next batch means the writer (the disk) is behind: the capture of that connection
// is cut, the primary goes on.
#pragma once

#include <memory>
#include <string>

#include "capture.h"
#include "config.h"
#include "leg.h"

namespace kstreams {
namespace engine {

class FileLeg final : public Leg {
 public:
  // Capture pipes get `slack` bytes (the mirror's bufferSize: its room to lag) when the engine's mirror
  // budget and the kernel grant it, else `pipeCapacity` (whole batches of P with room for jitter).
  FileLeg(LegHost* host, Conn* owner, const ActiveTarget& target, uint32_t pipeCapacity, uint32_t slack);
  ~FileLeg() override;
  // Starts the connection's record (its id, pipes, open record); not recorded when the capture is full
  // or the kernel refuses the pipes (counted).
  void Open(const SockAddr& client, const SockAddr& server);

  void Offer(const Pipe& p, size_t n, uint32_t turn) override;
  void OfferResponse(const Pipe& r, size_t n) override;
  // A recorder's: a capture pipe too full for the batch holds the client back (a timer retries in
  // kHoldRetryMs) instead of cutting; the capture's bounds and a failed write still cut.
  size_t OfferHeld(const Pipe& p, size_t n, uint32_t turn) override;
  void OnEvent(uint32_t) override {}
  bool Pump() override;
  void OnClientEnd() override {}
  void OnPrimaryDone(uint64_t) override { End("fin"); }
  void OnTimer(uint64_t) override {}
  void Abort() override { End("rst"); }
  bool closed() const override { return closed_; }

 private:
  enum class Why { kFull, kSlow, kDisk };
  static constexpr uint64_t kHoldRetryMs = 1;
  // Copies n bytes at the head of `from` into the capture pipe; false when the capture was cut. With
  // `taken` (a recorder's hold), a pipe too full for all of it is not a cut: *taken says how much went.
  bool Copy(const Pipe& from, size_t n, bool c2s, size_t* taken = nullptr);
  void StartTurn(uint32_t turn);
  void Cut(Why why, size_t alsoLost);
  void End(const char* how);
  void Close();

  LegHost* host_;
  std::shared_ptr<CaptureSession> session_;
  std::shared_ptr<TargetCounters> target_;
  TargetSlot& slot_;
  uint32_t pipeCapacity_, slack_;
  uint64_t granted_ = 0;  // from the engine's mirror budget, for pipes larger than pipeCapacity
  std::shared_ptr<CaptureConn> conn_;
  uint64_t c2s_ = 0, s2c_ = 0;  // bytes tee'd into each pipe: the offsets the writer will reach
  uint32_t lastTurn_ = 0, turns_ = 0;
  bool started_ = false;  // a turn record was written for the first client bytes
  bool closed_ = false, dropping_ = false;
  bool holding_ = false;  // a recorder's: the client is held back until the capture pipe has room
};

}  // namespace engine
}  // namespace kstreams
