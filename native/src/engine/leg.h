// A leg: one destination of a copy of the client's stream, beside the primary path to the app. A leg is
// a pipe (its private copy, filled by tee() from the primary pipe P), a sink (a mirror socket, possibly
// with an sk_msg transform, or a capture's files: file_leg.h) and a policy (when bytes may go out: turn
// pacing; what happens when the sink falls behind: cut). The primary pump only offers each batch of P
// and says when the client's stream ended; it never waits for a leg, and a leg never touches P's bytes
// beyond its tee.
#pragma once

#include <cstddef>
#include <cstdint>

#include "counters.h"
#include "pipes.h"

namespace kstreams {
namespace engine {

struct Conn;
class Leg;

// What the worker's timers call: a leg, or a connection's primary path (its transform's retries).
class Timed {
 public:
  virtual ~Timed() = default;
  virtual void OnTimer(uint64_t now) = 0;
  virtual Conn* timedConn() const = 0;
};

// What an epoll event points at.
struct Handle {
  enum Role : int { kClient = 0, kApp = 1, kLeg = 2, kListener = -1, kWake = -2 };
  Conn* conn;
  int role;
  Leg* leg;
};

// What a leg may ask of the worker that owns it (and its connection).
class LegHost {
 public:
  virtual ~LegHost() = default;
  virtual bool Watch(int fd, Handle* handle, uint32_t events) = 0;
  // Replaces the leg's timer (0: none); OnTimer() runs once it is due.
  virtual void SetTimer(Leg* leg, uint64_t at) = 0;
  virtual PipePool& pipes() = 0;
  virtual int workerIndex() const = 0;
  virtual WorkerCounters& counters() = 0;
  // Engine-wide mirror send-buffer budget: true when `bytes` were granted.
  virtual bool GrantMirrorBuffer(uint64_t bytes) = 0;
  // As much of `want` as the budget has, if at least `min`; 0 otherwise.
  virtual uint64_t GrantMirrorBufferUpTo(uint64_t want, uint64_t min) = 0;
  virtual void ReleaseMirrorBuffer(uint64_t bytes) = 0;
};

class Leg : public Timed {
 public:
  explicit Leg(Conn* owner) : owner_(owner) {}
  ~Leg() override = default;
  Conn* owner() const { return owner_; }
  Conn* timedConn() const override { return owner_; }
  // A batch at the head of the primary pipe P: `n` bytes of client turn `turn`. The leg copies it
  // (tee, non-blocking) or gives up (cut, counted). It must not consume P.
  virtual void Offer(const Pipe& p, size_t n, uint32_t turn) = 0;
  // A batch at the head of the response pipe R: `n` bytes the app sent. Only a leg that records
  // responses (a capture) copies it, the same way; it must not consume R.
  virtual void OfferResponse(const Pipe& r, size_t n) {}
  // A recorder's batch (its app is a sink and this is the connection's only leg): there is no primary to
  // protect, so a leg whose sink is behind may take the batch in part and hold the client back instead of
  // cutting. Returns the bytes at the head of P it is done with (copied, or given up for good); the rest
  // stays in P, unread from the client, and is offered again when the connection is pumped next (the
  // leg sets its timer for that). Default: Offer() all of it.
  virtual size_t OfferHeld(const Pipe& p, size_t n, uint32_t turn) {
    Offer(p, n, turn);
    return n;
  }
  // Epoll readiness of the leg's own fd.
  virtual void OnEvent(uint32_t events) = 0;
  // Moves what it can; true when something moved.
  virtual bool Pump() = 0;
  // The client's stream ended (EOF) after the last Offer.
  virtual void OnClientEnd() = 0;
  // Both primary sockets are closed; the leg may finish what it holds until `until` (ms, monotonic).
  virtual void OnPrimaryDone(uint64_t until) = 0;
  void OnTimer(uint64_t now) override = 0;
  // Ends the leg at once with a reset (the primary was aborted, or the engine is resetting).
  virtual void Abort() = 0;
  virtual bool closed() const = 0;

 protected:
  Conn* const owner_;
};

}  // namespace engine
}  // namespace kstreams
