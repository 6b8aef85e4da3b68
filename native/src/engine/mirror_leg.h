// The mirror leg: a private pipe M filled by tee() from the primary pipe, drained into a socket to one
// mirror target, paced by the conversation's turns (docs/adr/0005-turn-paced-mirrors.md).
#pragma once

#include <deque>
#include <memory>
#include <string>

#include "config.h"
#include "leg.h"
#include "transform.h"

namespace kstreams {
namespace engine {

class MirrorLeg final : public Leg {
 public:
  struct Options {
    uint32_t pipeCapacity;  // M at its largest: whole batches of P, with room for jitter
    uint32_t turnTimeoutMs;
    uint32_t bufferSize;    // SO_SNDBUF it may grow to when it lags
    uint32_t connectTimeoutMs;
    // The mirror's transform (spec.transform applyTo mirror|both); null: none.
    std::shared_ptr<const TransformProfile> transform;
  };
  // The app's answers not yet compared that a compared mirror may hold (its compare pipe); past it, or
  // when the target is further ahead than kComparePending, the connection is left uncompared.
  static constexpr uint32_t kComparePipe = 1u << 20;
  static constexpr size_t kComparePending = 64u << 10;
  // A lagging mirror's socket starts at this send buffer (fixed, so the kernel's autotuning cannot grow
  // every mirror socket to tcp_wmem[2]) and grows to Options.bufferSize from the engine's budget.
  static constexpr uint32_t kStartBuffer = 256u << 10;
  // After the primary ends, how long a mirror may take to deliver what it still holds.
  static constexpr uint64_t kDrainMs = 10000;
  // Transformed mirrors: how soon a send refused for lack of send-buffer room is tried again.
  static constexpr uint64_t kRetryMs = 1;

  MirrorLeg(LegHost* host, Conn* owner, const ActiveTarget& target, const Options& options);
  ~MirrorLeg() override;
  // Opens the socket and starts the connect (a failure is counted as a connect failure).
  void Open();

  void Offer(const Pipe& p, size_t n, uint32_t turn) override;
  void OfferResponse(const Pipe& r, size_t n) override;
  void OnEvent(uint32_t events) override;
  bool Pump() override;
  void OnClientEnd() override { clientEnded_ = true; }
  void OnPrimaryDone(uint64_t until) override;
  void OnTimer(uint64_t now) override;
  void Abort() override;
  bool closed() const override { return state_ == kClosed; }

 private:
  enum State { kConnecting, kOpen, kClosed };
  // Bytes of one client turn, in order: in M, or (spilled) in the spill file.
  struct Segment {
    uint32_t turn;
    size_t bytes;
    bool spilled;
  };

  bool Gated(const Segment& s) const;
  // Whether M can take one more batch of P for sure: every batch takes at most P's slots.
  bool RoomInPipe(const Pipe& p) const { return (batchesInPipe_ + 1) * p.slots <= pipe_.slots; }
  // Grows M towards Options.pipeCapacity; whether it then has room for one more batch of P.
  bool GrowPipe(const Pipe& p);
  // Moves everything in M to the spill file (created and granted from the engine's mirror budget on
  // first use); false when the spill is full or cannot be had.
  bool Spill();
  void ReleaseSpill();
  uint64_t spilledBytes() const { return spillWrite_ - spillRead_; }
  bool Grow();
  void MaybeShrink();
  void Connected();
  void Skip(size_t n);
  void Cut(size_t alsoLost);
  void Fail();
  // The transform could not be applied: closed with a reset, counted (never sent untransformed).
  void TransformFailed();
  // Releases held bytes when nothing else can go out now; false when the leg was closed.
  bool MaybeFlushHeld(bool* progress);
  void Finish();
  void Close();
  // Bytes written but thrown away by the reset that follows: moved from mirrored to dropped.
  void ForgetUnsent();
  void Rearm();
  // Response comparison: the target's bytes in `got` against the app's from the compare pipe.
  void CompareAnswer(const char* got, size_t n);
  void ComparePending();
  void StopComparing();
  // The verdict at a clean end: counted as compared, and as diverged when the answers differed.
  void CompareVerdict();

  LegHost* host_;
  Handle handle_;
  std::shared_ptr<TargetCounters> target_;
  TargetSlot& slot_;
  Options opt_;
  SockAddr address_;
  State state_ = kConnecting;
  int sock_ = -1;
  Pipe pipe_;
  size_t batchesInPipe_ = 0;  // batches tee'd into M since it was last empty
  std::deque<Segment> queue_;
  // The spill: a memfd (tmpfs pages, in the kernel) that holds what M cannot, densely: a pipe slot holds
  // one skb fragment however small, so M holds only 64 small turns at 256 KiB. Bounded by bufferSize.
  int spillFd_ = -1;
  uint64_t spillWrite_ = 0, spillRead_ = 0, spillGranted_ = 0;
  // Turn pacing: the turn of the last bytes written, and whether the target answered since.
  uint32_t lastWrittenTurn_ = 0;
  bool answered_ = false;
  bool everAnswered_ = false;  // a target that never answers (a sink, a recorder) is not waited for twice
  bool paced_ = true;
  bool readable_ = false, writable_ = false;
  bool clientEnded_ = false, shutSent_ = false, peerEof_ = false, primaryDone_ = false;
  bool dropping_ = false;  // cut, skipped or failed: later primary bytes count as dropped
  bool copied_ = false;    // some bytes were tee'd already (a pipe refused later is a cut, not a skip)
  bool growTried_ = false;
  bool growRefused_ = false;  // M's growth was refused by the pipe budget: not asked again for this pipe
  uint64_t granted_ = 0;   // send-buffer bytes granted from the engine's budget
  uint64_t connectDeadline_ = 0, gateDeadline_ = 0, drainDeadline_ = 0;
  TransformedSocket xf_;
  uint64_t xfRetryAt_ = 0, xfHoldAt_ = 0;
  bool holdDue_ = false;
  // Response comparison (Options.compareResponses): the app's answers of this connection tee'd from R
  // into cmp_, the target's answers read and compared against them in order.
  enum Compare { kCompareOff, kComparing, kDiverged, kUncompared };
  Compare compare_ = kCompareOff;
  Pipe cmp_;
  uint64_t appAnswerBytes_ = 0, targetAnswerBytes_ = 0, compared_ = 0;
  std::string pending_;  // target bytes ahead of the app's
};

}  // namespace engine
}  // namespace kstreams
