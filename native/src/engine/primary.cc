// The primary path of a connection: client -> P -> app and app -> R -> client, all splice(). Why:
//  - tee() copies from the head of a pipe, so P is refilled only when empty: every byte in P has then
//    been offered to the legs exactly once, and a mirror gets an exact prefix of the primary stream.
//  - The read that can only return EAGAIN is skipped: a splice into an empty pipe that returns fewer
//    bytes than the pipe has slots cannot have filled it, so the receive queue was drained; not once
//    FIN/RST/urgent data was signalled (that edge is consumed: read on until EOF or EAGAIN).
//  - P -> app follows the read at once, before any leg writes: the primary never waits behind a mirror.
//  - Turns: client bytes read after the app sent bytes start a new turn; legs pace by it.
//  - Pipes come from the worker's pool when bytes arrive and go back when empty.
//  - EINTR is progress (try again), never "nothing moved": an edge-triggered fd would stall.
//  - Urgent data: splice() stops at the urgent mark; the urgent byte is moved inline (sockets.h).
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "mirror_leg.h"
#include "sockets.h"
#include "worker.h"

namespace kstreams {
namespace engine {

namespace {

enum class Moved { kBytes, kEof, kAgain, kRetry, kError };

Moved SpliceResult(ssize_t n) {
  if (n > 0) return Moved::kBytes;
  if (n == 0) return Moved::kEof;
  if (errno == EAGAIN) return Moved::kAgain;
  if (errno == EINTR) return Moved::kRetry;
  return Moved::kError;
}

}  // namespace

bool Worker::TakePipe(Conn* c, Pipe* p, uint32_t want) {
  if (p->held()) return true;
  if (!pool_.Take(want, p)) return false;
  // A refused size is not an error for the connection: it keeps the kernel's size and is slower.
  if (p->capacity < uint32_t(RoundPipeSize(want)) && !c->resizeCounted) {
    c->resizeCounted = true;
    Add(k_.pipeResizeFailures);
  }
  return true;
}

bool Worker::PumpPrimary(Conn* c) {
  bool progress = false;
  // client -> P, only into an empty P, then offer it to every leg; P -> app follows at once.
  if (c->p.bytes == 0 && !c->clientEof && c->clientReadable) {
    if (!TakePipe(c, &c->p, c->pWant)) {
      // No pipe (fds or the hard pipe limit): the connection cannot be proxied without copying its bytes
      // through user space, which the engine does not do: reset, counted.
      Add(k_.setupFailures);
      AbortPrimary(c);
      return false;
    }
    ssize_t n = splice(c->client, nullptr, c->p.wr, nullptr, c->p.capacity, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    // Urgent data was signalled (EPOLLPRI is part of clientHup): a splice that stops at the urgent mark
    // must not be taken for "drained" or for the end of the stream.
    if (n <= 0 && c->clientHup && (n == 0 || errno == EAGAIN)) {
      int moved = MoveUrgentByte(c->client, c->p.wr);
      if (moved < 0) {
        AbortPrimary(c);
        return false;
      }
      if (moved > 0) n = 1;
    }
    switch (SpliceResult(n)) {
      case Moved::kBytes:
        if (c->appAnswered) {
          c->turn++;
          c->appAnswered = false;
        }
        c->p.bytes = size_t(n);
        for (auto& leg : c->legs) leg->Offer(c->p, size_t(n), c->turn);
        progress = true;
        if (size_t(n) < c->p.slots && !c->clientHup) c->clientReadable = false;
        break;
      case Moved::kEof:
        c->clientEof = true;
        for (auto& leg : c->legs) leg->OnClientEnd();
        progress = true;
        break;
      case Moved::kAgain:
        c->clientReadable = false;
        break;
      case Moved::kRetry:
        progress = true;
        break;
      case Moved::kError:
        AbortPrimary(c);
        return false;
    }
    if (c->p.bytes == 0) pool_.Give(&c->p);
  }
  if (c->p.bytes > 0 && c->appConnected && c->appWritable) {
    ssize_t n = splice(c->p.rd, nullptr, c->app, nullptr, c->p.bytes, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    switch (SpliceResult(n)) {
      case Moved::kBytes:
        c->p.bytes -= size_t(n);
        Add(k_.bytesClientToApp, uint64_t(n));
        progress = true;
        if (c->p.bytes == 0) pool_.Give(&c->p);
        break;
      case Moved::kAgain:
        c->appWritable = false;
        break;
      case Moved::kRetry:
        progress = true;
        break;
      case Moved::kEof:
      case Moved::kError:
        AbortPrimary(c);
        return false;
    }
  }
  if (c->clientEof && c->p.bytes == 0 && c->appConnected && !c->appShut) {
    shutdown(c->app, SHUT_WR);
    c->appShut = true;
    progress = true;
  }
  // app -> R -> client, the same way.
  if (c->r.bytes == 0 && !c->appEof && c->appConnected && c->appReadable) {
    if (!TakePipe(c, &c->r, c->rWant)) {
      Add(k_.setupFailures);
      AbortPrimary(c);
      return false;
    }
    ssize_t n = splice(c->app, nullptr, c->r.wr, nullptr, c->r.capacity, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n <= 0 && c->appHup && (n == 0 || errno == EAGAIN)) {
      int moved = MoveUrgentByte(c->app, c->r.wr);
      if (moved < 0) {
        AbortPrimary(c);
        return false;
      }
      if (moved > 0) n = 1;
    }
    switch (SpliceResult(n)) {
      case Moved::kBytes:
        c->r.bytes = size_t(n);
        c->appAnswered = true;
        progress = true;
        if (size_t(n) < c->r.slots && !c->appHup) c->appReadable = false;
        break;
      case Moved::kEof:
        c->appEof = true;
        progress = true;
        break;
      case Moved::kAgain:
        c->appReadable = false;
        break;
      case Moved::kRetry:
        progress = true;
        break;
      case Moved::kError:
        AbortPrimary(c);
        return false;
    }
    if (c->r.bytes == 0) pool_.Give(&c->r);
  }
  if (c->r.bytes > 0 && c->clientWritable) {
    ssize_t n = splice(c->r.rd, nullptr, c->client, nullptr, c->r.bytes, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    switch (SpliceResult(n)) {
      case Moved::kBytes:
        c->r.bytes -= size_t(n);
        Add(k_.bytesAppToClient, uint64_t(n));
        progress = true;
        if (c->r.bytes == 0) pool_.Give(&c->r);
        break;
      case Moved::kAgain:
        c->clientWritable = false;
        break;
      case Moved::kRetry:
        progress = true;
        break;
      case Moved::kEof:
      case Moved::kError:
        AbortPrimary(c);
        return false;
    }
  }
  if (c->appEof && c->r.bytes == 0 && !c->clientShut) {
    shutdown(c->client, SHUT_WR);
    c->clientShut = true;
    progress = true;
  }
  if (c->appShut && c->clientShut) {
    ClosePrimary(c);
    progress = true;  // legs may now be able to finish
  }
  return progress;
}

// A reset, an error or a failed upstream connect: both primary sockets close with RST, and so do the
// legs, so that neither the app nor a target takes a truncated stream for a complete one.
void Worker::AbortPrimary(Conn* c) {
  if (c->primaryDone) return;
  if (!CloseWithReset(c->client)) Add(k_.resetFailures);
  if (c->app >= 0 && !CloseWithReset(c->app)) Add(k_.resetFailures);
  for (auto& leg : c->legs) leg->Abort();
  ClosePrimary(c);
}

void Worker::ClosePrimary(Conn* c) {
  if (c->primaryDone) return;
  CloseFd(c->client);
  CloseFd(c->app);
  pool_.Give(&c->p);  // closed instead when it still holds bytes
  pool_.Give(&c->r);
  c->primaryDone = true;
  Add(k_.connectionsClosed);
  if (draining_ && !resetting_) Add(k_.connectionsDrained);
  uint64_t until = NowMs() + MirrorLeg::kDrainMs;
  if (draining_) until = std::min(until, engine_->drainDeadline());
  for (auto& leg : c->legs)
    if (!leg->closed()) leg->OnPrimaryDone(until);
}

void Worker::MaybeFree(Conn* c) {
  if (c->freed || !c->primaryDone) return;
  for (auto& leg : c->legs)
    if (!leg->closed()) return;
  c->freed = true;
  conns_.erase(c);
  if (c->ready) {
    ready_.erase(std::find(ready_.begin(), ready_.end(), c));
    c->ready = false;
  }
  graveyard_.push_back(c);
}

}  // namespace engine
}  // namespace kstreams
