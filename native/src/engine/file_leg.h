// The file leg: a connection recorded by a capture (capture.h). Like a mirror leg it tee()s each batch of
// the primary pipe P, non-blocking, into a pipe of its own - two with responses, the app's batches of R
// going to the second - and never waits. Each pipe is emptied at once into a socket pair (zero-copy: the
// socket's buffers hold references to the same pages) whose other end the capture's writer thread reads
// into the files: the socket's send buffer is the lane's slack, grown from the engine's mirror budget to
// the mirror's bufferSize like a lagging mirror's, on top of the pipe's. The writer never touches a pipe
// the worker writes (a splice into a file holds the pipe's lock while it writes, and a tee() into that
// pipe would wait for it). Both full for the next batch means the writer (the disk) is behind: the
// capture of that connection is cut, the primary goes on.
#pragma once

#include <deque>
#include <memory>
#include <string>

#include "capture.h"
#include "config.h"
#include "leg.h"

namespace kstreams {
namespace engine {

class FileLeg final : public Leg {
 public:
  // A lane's socket starts with this send buffer and grows to `slack` (the mirror's bufferSize) from the
  // engine's mirror budget when the writer falls behind; capture pipes are `pipeCapacity` (whole batches
  // of P with room for jitter).
  static constexpr uint32_t kStartBuffer = 256u << 10;
  FileLeg(LegHost* host, Conn* owner, const ActiveTarget& target, uint32_t pipeCapacity, uint32_t slack);
  ~FileLeg() override;
  // Starts the connection's record (its id, pipes, sockets, open record); not recorded when the capture
  // is full or the kernel refuses the pipes or sockets (counted).
  void Open(const SockAddr& client, const SockAddr& server);

  void Offer(const Pipe& p, size_t n, uint32_t turn) override;
  void OfferResponse(const Pipe& r, size_t n) override;
  // A recorder's: a capture lane too full for the batch holds the client back (a timer retries in
  // kHoldRetryMs, and the socket's writability pumps the connection) instead of cutting; the capture's
  // bounds and a failed write still cut.
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
  // One direction: the capture pipe (in CaptureConn), the worker's end of its socket pair, and where
  // its bytes are: tee'd into the pipe, moved on into the socket, and posted to the writer.
  struct Lane {
    int pipeRd = -1, pipeWr = -1;  // CaptureConn's, used by the worker until the end
    int sock = -1;                 // the worker's end of the socket pair (owned by the leg)
    uint64_t inPipe = 0;           // tee'd, not yet in the socket
    uint64_t pushed = 0, posted = 0;
    uint64_t granted = 0;          // send buffer granted from the engine's mirror budget
    bool grown = false;            // grown once since it was last shrunk
  };
  // Copies n bytes at the head of `from` into the capture pipe; false when the capture was cut. With
  // `taken` (a recorder's hold), a lane too full for all of it is not a cut: *taken says how much went.
  bool Copy(const Pipe& from, size_t n, bool c2s, size_t* taken = nullptr);
  // Moves what the lanes' pipes hold into their sockets, and posts what waited behind it, in order;
  // true when bytes moved. False in *failed when a socket refused them for good.
  bool Flush(bool* failed);
  bool Push(Lane& l, bool* failed);
  bool Grow(Lane& l);
  void MaybeShrink();
  // Posts an op to the writer in its order: at once, or after the bytes before it reached their sockets.
  void Emit(CaptureOp&& op);
  bool MakeLane(Lane& l, int* writerSock, int* pipeRd, int* pipeWr);
  void StartTurn(uint32_t turn);
  void Cut(Why why, size_t alsoLost);
  void End(const char* how);
  void Close();

  LegHost* host_;
  Handle handle_;
  std::shared_ptr<CaptureSession> session_;
  std::shared_ptr<TargetCounters> target_;
  TargetSlot& slot_;
  uint32_t pipeCapacity_, slack_;
  std::shared_ptr<CaptureConn> conn_;
  Lane lanes_[2];  // c2s, s2c
  // Ops that wait for bytes still in a pipe (their socket was full): data ops and the records after them.
  std::deque<CaptureOp> held_;
  uint64_t c2s_ = 0, s2c_ = 0;  // bytes tee'd into each lane: the offsets the writer will reach
  uint32_t lastTurn_ = 0, turns_ = 0;
  bool started_ = false;  // a turn record was written for the first client bytes
  bool closed_ = false, dropping_ = false;
  bool holding_ = false;  // a recorder's: the client is held back until the capture lane has room
};

}  // namespace engine
}  // namespace kstreams
