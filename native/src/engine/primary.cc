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

// from -> its empty pipe. Sets *n to the bytes read (0 when none); false when the connection was aborted.
bool Worker::Fill(Conn* c, Side& from, Pipe& pipe, uint32_t want, size_t* n, bool* progress) {
  *n = 0;
  if (pipe.bytes != 0 || from.eof || !from.readable) return true;
  if (!TakePipe(c, &pipe, want)) {
    // No pipe (fds or the hard pipe limit): the connection cannot be proxied without copying its bytes
    // through user space, which the engine does not do: reset, counted.
    Add(k_.setupFailures);
    AbortPrimary(c);
    return false;
  }
  ssize_t got = splice(from.fd, nullptr, pipe.wr, nullptr, pipe.capacity, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
  // Urgent data was signalled (EPOLLPRI is part of hup): a splice that stops at the urgent mark must not
  // be taken for "drained" or for the end of the stream.
  if (got <= 0 && from.hup && (got == 0 || errno == EAGAIN)) {
    int moved = MoveUrgentByte(from.fd, pipe.wr);
    if (moved < 0) {
      AbortPrimary(c);
      return false;
    }
    if (moved > 0) got = 1;
  }
  switch (SpliceResult(got)) {
    case Moved::kBytes:
      pipe.bytes = *n = size_t(got);
      *progress = true;
      if (*n < pipe.slots && !from.hup) from.readable = false;
      break;
    case Moved::kEof:
      from.eof = true;
      *progress = true;
      break;
    case Moved::kAgain:
      from.readable = false;
      break;
    case Moved::kRetry:
      *progress = true;
      break;
    case Moved::kError:
      AbortPrimary(c);
      return false;
  }
  if (pipe.bytes == 0) pool_.Give(&pipe);
  return true;
}

// pipe -> to, then to's FIN once `from` ended and the pipe is empty. False when the connection was aborted.
bool Worker::Flush(Conn* c, Side& from, Pipe& pipe, Side& to, Counter& delivered, bool* progress) {
  if (pipe.bytes > 0 && to.writable) {
    ssize_t n = splice(pipe.rd, nullptr, to.fd, nullptr, pipe.bytes, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    switch (SpliceResult(n)) {
      case Moved::kBytes:
        pipe.bytes -= size_t(n);
        Add(delivered, uint64_t(n));
        *progress = true;
        if (pipe.bytes == 0) pool_.Give(&pipe);
        break;
      case Moved::kAgain:
        to.writable = false;
        break;
      case Moved::kRetry:
        *progress = true;
        break;
      case Moved::kEof:
      case Moved::kError:
        AbortPrimary(c);
        return false;
    }
  }
  if (from.eof && pipe.bytes == 0 && !to.shut) {
    shutdown(to.fd, SHUT_WR);
    to.shut = true;
    *progress = true;
  }
  return true;
}

bool Worker::PumpPrimary(Conn* c) {
  bool progress = false;
  size_t n;
  // client -> P, then offer the batch to every leg; P -> app follows at once.
  if (!Fill(c, c->client, c->p, c->pWant, &n, &progress)) return false;
  if (n > 0) {
    if (c->appAnswered) {
      c->turn++;
      c->appAnswered = false;
    }
    for (auto& leg : c->legs) leg->Offer(c->p, n, c->turn);
  } else if (c->client.eof && !c->clientEndOffered) {
    c->clientEndOffered = true;
    for (auto& leg : c->legs) leg->OnClientEnd();
  }
  if (c->appConnected && !Flush(c, c->client, c->p, c->app, k_.bytesClientToApp, &progress)) return false;
  // app -> R -> client, the same way; app bytes end the client's turn.
  if (c->appConnected) {
    if (!Fill(c, c->app, c->r, c->rWant, &n, &progress)) return false;
    if (n > 0) c->appAnswered = true;
  }
  if (!Flush(c, c->app, c->r, c->client, k_.bytesAppToClient, &progress)) return false;
  if (c->app.shut && c->client.shut) {
    ClosePrimary(c);
    progress = true;  // legs may now be able to finish
  }
  return progress;
}

// A reset, an error or a failed upstream connect: both primary sockets close with RST, and so do the
// legs, so that neither the app nor a target takes a truncated stream for a complete one.
void Worker::AbortPrimary(Conn* c) {
  if (c->primaryDone) return;
  if (!CloseWithReset(c->client.fd)) Add(k_.resetFailures);
  if (c->app.fd >= 0 && !CloseWithReset(c->app.fd)) Add(k_.resetFailures);
  for (auto& leg : c->legs) leg->Abort();
  ClosePrimary(c);
}

void Worker::ClosePrimary(Conn* c) {
  if (c->primaryDone) return;
  CloseFd(c->client.fd);
  CloseFd(c->app.fd);
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
