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
//  - A transform of the bytes to the app (transform.h): the upstream socket is attached before its
//    first byte, sends never exceed its free send buffer, the ledger is checked after every send, and a
//    failure resets the connection: the app never gets untransformed bytes.
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "accept_policy.h"
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

// A read that found no pipe (out of fds) is tried again this soon, for at most kPipeWaitMs in a row.
constexpr uint64_t kPipeRetryMs = 5;
constexpr uint64_t kPipeWaitMs = 10000;

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
    // Out of fds for a moment (other connections hold them; the accept reserve covers a connection's
    // setup, not the pipes its bytes take later): the bytes wait in the socket, unread, and the read is
    // tried again shortly, as pipes go back to the pool. Past kPipeWaitMs, or for any other refusal, the
    // connection cannot be proxied without copying its bytes through user space, which the engine does
    // not do: reset, counted.
    uint64_t now = NowMs();
    if (IsResourceShortage(errno) && (!c->pipeWaitSince || now - c->pipeWaitSince < kPipeWaitMs)) {
      if (!c->pipeWaitSince) c->pipeWaitSince = now;
      c->pipeRetryAt = now + kPipeRetryMs;
      RearmPrimary(c);
      return true;
    }
    Add(k_.setupFailures);
    AbortPrimary(c);
    return false;
  }
  c->pipeWaitSince = 0;
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

// How soon a transformed send refused for lack of send-buffer room is tried again, in milliseconds.
constexpr uint64_t kXfRetryMs = 1;

void PrimaryTimer::OnTimer(uint64_t now) {
  if (conn->pipeRetryAt && now >= conn->pipeRetryAt) conn->pipeRetryAt = 0;  // Pump reads again
  if (conn->xfRetryAt && now >= conn->xfRetryAt) {
    conn->xfRetryAt = 0;
    conn->app.writable = true;
  }
  if (conn->xfHoldAt && now >= conn->xfHoldAt) {
    conn->xfHoldAt = 0;
    conn->holdDue = true;
  }
}

void Worker::RearmPrimary(Conn* c) {
  uint64_t at = 0;
  for (uint64_t d : {c->xfRetryAt, c->xfHoldAt, c->pipeRetryAt})
    if (d && (!at || d < at)) at = d;
  SetTimerOf(&c->timer, at);
}

bool Worker::AttachAppTransform(Conn* c) {
  if (!c->xfProfile || c->appXf) return true;
  c->appXf = std::make_unique<TransformedSocket>();
  // A fixed send buffer: sends are sized to its free room (transform.h), and with the kernel's
  // autotuning a fresh socket's room (16 KiB) would keep them tiny until it grows.
  int sndbuf = int(TransformedSocket::kSendBuffer);
  setsockopt(c->app.fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  if (c->appXf->Attach(c->xfProfile, c->app.fd)) return true;
  Add(k_.transformFailures);
  AbortPrimary(c);
  return false;
}

bool Worker::FlushHeld(Conn* c, bool* progress) {
  TransformedSocket* xf = c->appXf.get();
  if (!xf || xf->held() == 0) {
    c->xfHoldAt = 0;
    c->holdDue = false;
    return true;
  }
  if (c->p.bytes > 0 || !c->app.writable) return true;
  // The rest of a split pattern would come with the client's next bytes: wait for them briefly, not
  // past the client's end.
  if (!c->client.eof && !c->holdDue && xf->holdMs() > 0) {
    if (!c->xfHoldAt) {
      c->xfHoldAt = NowMs() + xf->holdMs();
      RearmPrimary(c);
    }
    return true;
  }
  int r = xf->Flush();
  if (r < 0) {
    Add(k_.transformFailures);
    AbortPrimary(c);
    return false;
  }
  if (r == 0) {
    c->xfRetryAt = NowMs() + kXfRetryMs;
    RearmPrimary(c);
    return true;
  }
  c->xfHoldAt = 0;
  c->holdDue = false;
  *progress = true;
  return true;
}

// pipe -> to, then to's FIN once `from` ended and the pipe is empty. False when the connection was aborted.
bool Worker::Flush(Conn* c, Side& from, Pipe& pipe, Side& to, Counter& delivered, TransformedSocket* xf, bool* progress) {
  if (pipe.bytes > 0 && to.writable) {
    size_t want = pipe.bytes;
    if (xf) {
      // Only what the send buffer takes whole (transform.h).
      want = xf->Limit(pipe.bytes);
      if (want == 0) {
        to.writable = false;
        c->xfRetryAt = NowMs() + kXfRetryMs;
        RearmPrimary(c);
      }
    }
    ssize_t n = want ? splice(pipe.rd, nullptr, to.fd, nullptr, want, SPLICE_F_NONBLOCK | SPLICE_F_MOVE) : 0;
    if (want && xf && !xf->Sent(n > 0 ? size_t(n) : 0)) {
      Add(k_.transformFailures);
      AbortPrimary(c);
      return false;
    }
    switch (want ? SpliceResult(n) : Moved::kAgain) {
      case Moved::kBytes:
        pipe.bytes -= size_t(n);
        Add(delivered, uint64_t(n));
        *progress = true;
        if (pipe.bytes == 0) pool_.Give(&pipe);
        if (xf) {
          c->xfHoldAt = 0;  // a hold left by this send waits afresh
          c->holdDue = false;
        }
        break;
      case Moved::kAgain:
        to.writable = false;
        break;
      case Moved::kRetry:
        *progress = true;
        break;
      case Moved::kEof:
      case Moved::kError:
        if (xf && errno == EACCES) Add(k_.transformFailures);  // the program dropped it
        AbortPrimary(c);
        return false;
    }
  }
  if (xf && !FlushHeld(c, progress)) return false;
  if (from.eof && pipe.bytes == 0 && !to.shut && !(xf && xf->held() > 0)) {
    if (!c->appIsSink || &to != &c->app) shutdown(to.fd, SHUT_WR);
    to.shut = true;
    *progress = true;
  }
  return true;
}

bool Worker::PumpRecorder(Conn* c) {
  bool progress = false;
  size_t n = 0;
  Leg& leg = *c->legs.front();
  if (c->p.bytes == 0) {
    if (!Fill(c, c->client, c->p, c->pWant, &n, &progress)) return false;
    if (n > 0) {
      // A burst after a silence of the turn gap starts a new turn (a recorder has no answers). A hold
      // just released is no silence: lastReadMs was set when it ended.
      uint64_t now = NowMs();
      if (c->lastReadMs && now - c->lastReadMs > engine_->config().recorderTurnGapMs) c->turn++;
      c->lastReadMs = now;
    } else if (c->client.eof && !c->clientEndOffered) {
      c->clientEndOffered = true;
      leg.OnClientEnd();
    }
  }
  if (c->p.bytes > 0) {
    // What the leg took leaves P for /dev/null; the rest waits in P, and the client is not read meanwhile
    // (Fill reads only into an empty P), so its sender is held back by TCP.
    size_t took = leg.OfferHeld(c->p, c->p.bytes, c->turn);
    while (took > 0) {
      ssize_t m = splice(c->p.rd, nullptr, c->app.fd, nullptr, took, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (m < 0 && errno == EINTR) continue;
      if (m <= 0) {
        AbortPrimary(c);
        return false;
      }
      c->p.bytes -= size_t(m);
      took -= size_t(m);
      Add(k_.bytesClientToApp, uint64_t(m));
      progress = true;
    }
    if (c->p.bytes == 0) {
      pool_.Give(&c->p);
      if (n == 0) c->lastReadMs = NowMs();  // a held batch went: the wait was ours, not the client's silence
    }
  }
  if (c->client.eof && c->p.bytes == 0 && !c->app.shut) {
    c->app.shut = true;
    c->app.eof = true;
    progress = true;
  }
  if (!Flush(c, c->app, c->r, c->client, k_.bytesAppToClient, nullptr, &progress)) return false;
  if (c->app.shut && c->client.shut) {
    ClosePrimary(c);
    progress = true;
  }
  return progress;
}

bool Worker::PumpPrimary(Conn* c) {
  if (c->appIsSink && c->legs.size() == 1) return PumpRecorder(c);
  bool progress = false;
  size_t n;
  // client -> P, then offer the batch to every leg; P -> app follows at once.
  if (!Fill(c, c->client, c->p, c->pWant, &n, &progress)) return false;
  if (n > 0) {
    if (c->appIsSink) {
      // A recorder has no answers: a burst after a silence of the turn gap starts a new turn.
      uint64_t now = NowMs();
      if (c->lastReadMs && now - c->lastReadMs > engine_->config().recorderTurnGapMs) c->appAnswered = true;
      c->lastReadMs = now;
    }
    if (c->appAnswered) {
      c->turn++;
      c->appAnswered = false;
    }
    for (auto& leg : c->legs) leg->Offer(c->p, n, c->turn);
  } else if (c->client.eof && !c->clientEndOffered) {
    c->clientEndOffered = true;
    for (auto& leg : c->legs) leg->OnClientEnd();
  }
  if (c->appConnected && !Flush(c, c->client, c->p, c->app, k_.bytesClientToApp, c->appXf.get(), &progress))
    return false;
  // A recorder's "app" has nothing to say and ends with the client.
  if (c->appIsSink && c->client.eof) c->app.eof = true;
  // app -> R -> client, the same way; app bytes end the client's turn.
  if (c->appConnected && !c->appIsSink) {
    if (!Fill(c, c->app, c->r, c->rWant, &n, &progress)) return false;
    if (n > 0) {
      c->appAnswered = true;
      for (auto& leg : c->legs) leg->OfferResponse(c->r, n);
    }
  }
  if (!Flush(c, c->app, c->r, c->client, k_.bytesAppToClient, nullptr, &progress)) return false;
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
  if (c->appIsSink) CloseFd(c->app.fd);
  else if (c->app.fd >= 0 && !CloseWithReset(c->app.fd)) Add(k_.resetFailures);
  for (auto& leg : c->legs) leg->Abort();
  ClosePrimary(c);
}

void Worker::ClosePrimary(Conn* c) {
  if (c->primaryDone) return;
  CloseFd(c->client.fd);
  CloseFd(c->app.fd);
  if (c->appXf) c->appXf->Release();
  c->xfRetryAt = c->xfHoldAt = c->pipeRetryAt = 0;
  SetTimerOf(&c->timer, 0);
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
