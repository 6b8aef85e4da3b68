// Why the mirror leg works the way it does:
//  - tee() copies the batch at the head of P into M, whole or not at all: a partial copy would leave a
//    gap in the mirror's stream, so a short tee cuts the mirror (RST, counted). The primary never waits.
//  - M holds the bytes of one or more client turns (Segment). The first turn and continuations of the
//    turn last written go out at once; a later turn waits until the target has answered (sent any byte)
//    since the last write, or until turnTimeoutMs passes (counted). Held bytes stay in M: a target that
//    cannot hold a turn fills M, and the next short tee cuts it. A target that has not sent a single byte
//    when a wait expires is taken for a sink (a recorder, a discard service): that connection's later
//    turns flow unpaced instead of waiting turnTimeoutMs each.
//  - No TCP_CORK: a turn must reach the target whole and at once (its answer releases the next turn), so
//    the socket has TCP_NODELAY and a turn goes out in one splice; within a splice the kernel already
//    sets MSG_MORE on all but the last chunk.
//  - M holds at most (its slots / P's slots) batches for sure. Before a batch that might not fit, what M
//    holds moves to the leg's spill file (a memfd: splice() copies into tmpfs pages inside the kernel,
//    densely) and is sent from there with sendfile(); a mirror is cut only when the spill (bufferSize,
//    granted from the engine's mirror budget) is full too. So a chatty session (a database's many small
//    turns) can fall thousands of turns behind for a moment without being cut.
//  - M is taken from the worker's pool at the first byte, at one batch's size (P's), grown to its full
//    capacity when a second batch would not fit, and given back when empty: an idle mirror holds no
//    pipe, and a request/response mirror holds a pipe no bigger than P's. Past the uid's pipe budget
//    (new pipes get 2 slots, none may grow) an M that holds P's batch still mirrors, and spills sooner.
//    Its send buffer starts small and fixed, grows from the engine's budget when it lags, and shrinks
//    back once everything was acknowledged.
#include "mirror_leg.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "connection.h"
#include "sockets.h"

namespace kstreams {
namespace engine {

namespace {

// Sent bytes of a spill are punched out of the file in steps of this (minus one: a mask).
constexpr uint64_t kSpillPunch = (1u << 20) - 1;
// The spill takes the engine's mirror budget in steps of this.
constexpr uint64_t kSpillGrant = 256u << 10;

void SetSendBuffer(int fd, uint32_t bytes) {
  int v = int(std::min<uint32_t>(bytes, 1u << 30));
  // FORCE passes net.core.wmem_max when we have CAP_NET_ADMIN; else the plain option, capped there.
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof v) != 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
}

}  // namespace

MirrorLeg::MirrorLeg(LegHost* host, Conn* owner, const ActiveTarget& target, const Options& options)
    : Leg(owner),
      host_(host),
      handle_{owner, Handle::kLeg, this},
      target_(target.counters),
      slot_(target.counters->at(host->workerIndex())),
      opt_(options),
      address_(target.address),
      paced_(options.turnTimeoutMs > 0),
      compare_(target.compareResponses ? kComparing : kCompareOff) {}

MirrorLeg::~MirrorLeg() {
  // The worker closes legs before freeing them; this only guards against leaks on teardown paths.
  if (state_ != kClosed) Abort();
}

void MirrorLeg::Open() {
  Add(slot_.connectionsMirrored);
  sock_ = socket(address_.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (sock_ < 0) {
    Fail();
    return;
  }
  SetNoDelay(sock_);
  SetSendBuffer(sock_, kStartBuffer);
  int r = connect(sock_, address_.sa(), address_.len);
  if ((r != 0 && errno != EINPROGRESS) || !host_->Watch(sock_, &handle_, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)) {
    Fail();
    return;
  }
  if (r == 0) Connected();
  else connectDeadline_ = NowMs() + opt_.connectTimeoutMs;
  Rearm();
}

void MirrorLeg::Connected() {
  state_ = kOpen;
  writable_ = true;
  connectDeadline_ = 0;
  // Into the transform's hash before the first byte: from then on every send runs the program.
  if (opt_.transform && !xf_.Attach(opt_.transform, sock_)) TransformFailed();
}

void MirrorLeg::Offer(const Pipe& p, size_t n, uint32_t turn) {
  if (state_ == kClosed) {
    if (dropping_) Add(slot_.bytesDropped, n);
    return;
  }
  if (!pipe_.held()) {
    // One batch's size first (P's: the pool's P pipes serve); grown when batches queue up in it.
    uint32_t first = std::min(opt_.pipeCapacity, p.wanted ? p.wanted : p.capacity);
    bool ok = host_->pipes().Take(first, &pipe_) && pipe_.slots >= p.slots;
    if (!ok) {
      // The per-user pipe budget (or fds) ran out: M cannot take this batch whole. Before any byte was
      // copied this mirror is simply not had (skipped); later it would have a gap (cut).
      host_->pipes().Discard(&pipe_);
      if (copied_) Cut(n);
      else Skip(n);
      return;
    }
    growRefused_ = false;
  }
  if (!RoomInPipe(p) && !GrowPipe(p) && !Spill()) {
    Cut(n);
    return;
  }
  ssize_t t = tee(p.rd, pipe_.wr, n, SPLICE_F_NONBLOCK);
  if (t != ssize_t(n)) {
    Cut(n);  // a partial copy is discarded with M
    return;
  }
  pipe_.bytes += n;
  batchesInPipe_++;
  copied_ = true;
  if (!queue_.empty() && queue_.back().turn == turn && !queue_.back().spilled) queue_.back().bytes += n;
  else queue_.push_back({turn, n, false});
}

bool MirrorLeg::GrowPipe(const Pipe& p) {
  if (growRefused_ || pipe_.capacity >= opt_.pipeCapacity) return false;
  // Refused once (the uid's pipe budget is used up), not asked again for this pipe: the spill takes it.
  growRefused_ = !host_->pipes().Grow(&pipe_, opt_.pipeCapacity);
  return RoomInPipe(p);
}

bool MirrorLeg::Spill() {
  if (pipe_.bytes == 0) {
    batchesInPipe_ = 0;
    return true;
  }
  if (spillFd_ < 0) {
    spillFd_ = memfd_create("kstreams-mirror-spill", MFD_CLOEXEC);
    if (spillFd_ < 0) return false;
  }
  // Granted in steps as it grows: a spill of a few small turns must not take a whole bufferSize of the
  // engine's budget from the other mirrors.
  uint64_t need = spilledBytes() + pipe_.bytes;
  if (need > opt_.bufferSize) return false;
  while (need > spillGranted_) {
    uint64_t step = std::min<uint64_t>(kSpillGrant, opt_.bufferSize - spillGranted_);
    if (!host_->GrantMirrorBuffer(step)) {
      Add(host_->counters().mirrorBufferDenied);
      return false;
    }
    spillGranted_ += step;
  }
  while (pipe_.bytes > 0) {
    loff_t off = loff_t(spillWrite_);
    ssize_t n = splice(pipe_.rd, nullptr, spillFd_, &off, pipe_.bytes, SPLICE_F_MOVE);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;  // ENOSPC, ENOMEM: the cut that follows discards M and the spill
    spillWrite_ += uint64_t(n);
    pipe_.bytes -= size_t(n);
  }
  // What was in M is in the file now, in the same order, behind what was spilled before.
  for (auto it = queue_.rbegin(); it != queue_.rend() && !it->spilled; ++it) it->spilled = true;
  batchesInPipe_ = 0;
  return true;
}

void MirrorLeg::ReleaseSpill() {
  spillWrite_ = spillRead_ = 0;
  if (spillFd_ >= 0) (void)!ftruncate(spillFd_, 0);
  if (spillGranted_) host_->ReleaseMirrorBuffer(spillGranted_);
  spillGranted_ = 0;
}

void MirrorLeg::OnEvent(uint32_t ev) {
  if (state_ == kConnecting && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
    if (ConnectError(sock_) != 0) {
      Fail();
      return;
    }
    Connected();
    Rearm();
  }
  if (state_ != kOpen) return;
  readable_ |= bool(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR));
  writable_ |= bool(ev & (EPOLLOUT | EPOLLHUP | EPOLLERR));
}

bool MirrorLeg::Gated(const Segment& s) const {
  return paced_ && s.turn != lastWrittenTurn_ && !answered_;
}

bool MirrorLeg::Pump() {
  if (state_ != kOpen) return false;
  bool progress = false;
  // Answers first: one may release the next turn. They are not wanted otherwise: MSG_TRUNC makes TCP
  // discard them without copying.
  while (readable_ && !peerEof_) {
    ssize_t n;
    if (compare_ == kComparing) {
      // Compared answers are read (a copy, on the mirror side only); the app's stay zero-copy.
      char buf[16 << 10];
      n = recv(sock_, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) CompareAnswer(buf, size_t(n));
    } else {
      n = recv(sock_, nullptr, 1 << 20, MSG_TRUNC | MSG_DONTWAIT);
    }
    if (n > 0) {
      answered_ = everAnswered_ = true;
      continue;
    }
    if (n == 0) {
      peerEof_ = true;
      progress = true;
    } else if (errno == EAGAIN) {
      readable_ = false;
    } else if (errno != EINTR) {
      // A reset from the target: what it had not taken yet is lost.
      if (!queue_.empty() || !shutSent_) Cut(0);
      else Finish();
      return true;
    }
  }
  while (!queue_.empty() && writable_) {
    Segment& s = queue_.front();
    if (Gated(s)) {
      if (!gateDeadline_) gateDeadline_ = NowMs() + opt_.turnTimeoutMs;
      break;
    }
    size_t want = s.bytes;
    if (xf_.attached()) {
      // Only what the send buffer takes whole (see transform.h).
      want = xf_.Limit(s.bytes);
      if (want == 0) {
        writable_ = false;
        if (Grow()) {
          writable_ = true;
          continue;
        }
        xfRetryAt_ = NowMs() + kRetryMs;
        break;
      }
    }
    ssize_t n;
    if (s.spilled) {
      loff_t off = loff_t(spillRead_);
      n = sendfile(sock_, spillFd_, &off, want);
    } else {
      n = splice(pipe_.rd, nullptr, sock_, nullptr, want, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    }
    if (xf_.attached() && !xf_.Sent(n > 0 ? size_t(n) : 0)) {
      TransformFailed();
      return true;
    }
    if (n > 0) {
      s.bytes -= size_t(n);
      if (s.spilled) {
        // Sent pages of the spill are freed as the read offset passes them: a mirror that stays behind
        // holds at most bufferSize of tmpfs, not everything it ever spilled.
        uint64_t before = spillRead_ & ~kSpillPunch, after = (spillRead_ + uint64_t(n)) & ~kSpillPunch;
        spillRead_ += uint64_t(n);
        if (after > before) (void)!fallocate(spillFd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, loff_t(after));
      } else {
        pipe_.bytes -= size_t(n);
      }
      Add(slot_.bytesMirrored, uint64_t(n));
      lastWrittenTurn_ = s.turn;
      answered_ = false;
      xfHoldAt_ = 0;  // a hold left by this send waits afresh
      holdDue_ = false;
      gateDeadline_ = 0;
      progress = true;
      if (s.bytes == 0) queue_.pop_front();
    } else if (n < 0 && errno == EAGAIN) {
      writable_ = false;
      if (Grow()) writable_ = true;  // room again at once: try the same splice
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      if (xf_.attached() && errno == EACCES) TransformFailed();  // the program dropped it
      else Cut(0);
      return true;
    }
  }
  if (!MaybeFlushHeld(&progress)) return true;
  if (pipe_.bytes == 0 && pipe_.held()) {
    host_->pipes().Give(&pipe_);
    batchesInPipe_ = 0;
  }
  if (spillGranted_ && spilledBytes() == 0) ReleaseSpill();
  if (queue_.empty()) {
    growTried_ = false;
    if (granted_) MaybeShrink();
  }
  if (clientEnded_ && queue_.empty() && !shutSent_ && xf_.held() == 0) {
    shutdown(sock_, SHUT_WR);
    shutSent_ = true;
    progress = true;
  }
  // Done when everything was sent and both sides ended.
  if (shutSent_ && peerEof_ && primaryDone_) {
    Finish();
    return true;
  }
  Rearm();
  return progress;
}

bool MirrorLeg::MaybeFlushHeld(bool* progress) {
  if (!xf_.attached() || xf_.held() == 0) {
    xfHoldAt_ = 0;
    holdDue_ = false;
    return true;
  }
  // Only when nothing else goes out now: the queue is empty, or its next turn waits for an answer that
  // the held bytes (the end of the turn just sent) may be what the target needs to give.
  if (!writable_ || !(queue_.empty() || Gated(queue_.front()))) return true;
  uint64_t now = NowMs();
  // The app answered the turn these bytes end: the client sends nothing more in it.
  bool turnOver = owner_->turn == lastWrittenTurn_ && owner_->appAnswered;
  bool due = clientEnded_ || !queue_.empty() || turnOver || holdDue_ || xf_.holdMs() == 0;
  if (!due) {
    if (!xfHoldAt_) {
      xfHoldAt_ = now + xf_.holdMs();
      Rearm();
    }
    return true;
  }
  int r = xf_.Flush();
  if (r < 0) {
    TransformFailed();
    return false;
  }
  if (r == 0) {
    xfRetryAt_ = now + kRetryMs;
    return true;
  }
  xfHoldAt_ = 0;
  holdDue_ = false;
  answered_ = false;
  *progress = true;
  return true;
}

void MirrorLeg::TransformFailed() {
  if (state_ == kClosed) return;
  Add(slot_.transformFailures);
  Cut(0);
}

// The target fell behind (EAGAIN): give its socket the configured slack, once per lag, if the engine's
// budget has room. Send-buffer memory is not charged to the per-uid pipe budget, so this is the one way
// to let a mirror absorb a long burst without cutting it.
bool MirrorLeg::Grow() {
  if (granted_ || growTried_ || opt_.bufferSize <= kStartBuffer) return false;
  growTried_ = true;
  // All of bufferSize if the budget has it, else what it has (the spills of held turns share it): a
  // partly grown buffer still absorbs more than the start size.
  uint64_t got = host_->GrantMirrorBufferUpTo(opt_.bufferSize, 2ull * kStartBuffer);
  if (got < opt_.bufferSize) Add(host_->counters().mirrorBufferDenied);
  if (!got) return false;
  granted_ = got;
  SetSendBuffer(sock_, uint32_t(got));
  return true;
}

void MirrorLeg::MaybeShrink() {
  if (UnsentBytes(sock_) != 0) return;
  SetSendBuffer(sock_, kStartBuffer);
  host_->ReleaseMirrorBuffer(granted_);
  granted_ = 0;
}

void MirrorLeg::OnPrimaryDone(uint64_t until) {
  primaryDone_ = true;
  drainDeadline_ = until;
  Rearm();
}

void MirrorLeg::OnTimer(uint64_t now) {
  if (state_ == kClosed) return;
  if (connectDeadline_ && now >= connectDeadline_ && state_ == kConnecting) {
    Fail();
    return;
  }
  if (drainDeadline_ && now >= drainDeadline_) {
    // The primary is gone and the mirror still has not delivered everything: what is left is lost.
    if (queue_.empty() && UnsentBytes(sock_) == 0 && shutSent_) Finish();
    else Cut(0);
    return;
  }
  if (xfRetryAt_ && now >= xfRetryAt_) {
    xfRetryAt_ = 0;
    writable_ = true;
  }
  if (xfHoldAt_ && now >= xfHoldAt_) {
    xfHoldAt_ = 0;
    holdDue_ = true;  // the worker pumps the connection next
  }
  if (gateDeadline_ && now >= gateDeadline_) {
    Add(slot_.turnWaitsExpired);
    answered_ = true;  // released; the worker pumps the connection next
    if (!everAnswered_) paced_ = false;
    gateDeadline_ = 0;
  }
  Rearm();
}

void MirrorLeg::Rearm() {
  uint64_t at = 0;
  for (uint64_t d : {connectDeadline_, gateDeadline_, drainDeadline_, xfRetryAt_, xfHoldAt_})
    if (d && (!at || d < at)) at = d;
  host_->SetTimer(this, at);
}

void MirrorLeg::ForgetUnsent() {
  uint64_t unsent = UnsentBytes(sock_);
  uint64_t mirrored = Read(slot_.bytesMirrored);
  unsent = std::min(unsent, mirrored);
  slot_.bytesMirrored.store(mirrored - unsent, std::memory_order_relaxed);
  Add(slot_.bytesDropped, unsent);
}

void MirrorLeg::Skip(size_t n) {
  // Not mirrored after all: it counts as skipped, not as mirrored.
  slot_.connectionsMirrored.store(Read(slot_.connectionsMirrored) - 1, std::memory_order_relaxed);
  Add(slot_.connectionsSkipped);
  Add(slot_.bytesDropped, n);
  dropping_ = true;
  if (!CloseWithReset(sock_)) Add(host_->counters().resetFailures);
  Close();
}

void MirrorLeg::Cut(size_t alsoLost) {
  if (state_ == kClosed) return;
  Add(slot_.connectionsCut);
  Add(slot_.bytesDropped, pipe_.bytes + spilledBytes() + alsoLost);
  ForgetUnsent();
  dropping_ = true;
  if (!CloseWithReset(sock_)) Add(host_->counters().resetFailures);
  Close();
}

void MirrorLeg::Fail() {
  if (state_ == kClosed) return;
  Add(slot_.connectFailures);
  Add(slot_.bytesDropped, pipe_.bytes + spilledBytes());
  dropping_ = true;
  CloseFd(sock_);
  Close();
}

void MirrorLeg::OfferResponse(const Pipe& r, size_t n) {
  if (compare_ != kComparing || state_ == kClosed) return;
  if (!cmp_.held() && !host_->pipes().Take(kComparePipe, &cmp_)) {
    host_->pipes().Discard(&cmp_);
    StopComparing();
    return;
  }
  // The batch is all of R (the pump fills R only when it is empty): a copy of its pages, or nothing.
  ssize_t t = tee(r.rd, cmp_.wr, n, SPLICE_F_NONBLOCK);
  if (t != ssize_t(n)) {
    StopComparing();  // the target is too far behind: this connection goes uncompared
    return;
  }
  cmp_.bytes += n;
  appAnswerBytes_ += n;
  ComparePending();
}

void MirrorLeg::CompareAnswer(const char* got, size_t n) {
  targetAnswerBytes_ += n;
  if (compare_ != kComparing) return;
  pending_.append(got, n);
  ComparePending();
  if (compare_ == kComparing && pending_.size() > kComparePending) StopComparing();
}

void MirrorLeg::ComparePending() {
  char app[16 << 10];
  while (compare_ == kComparing && !pending_.empty() && cmp_.bytes > 0) {
    size_t want = std::min({pending_.size(), cmp_.bytes, sizeof app});
    ssize_t m = read(cmp_.rd, app, want);
    if (m <= 0) {
      StopComparing();
      return;
    }
    cmp_.bytes -= size_t(m);
    if (memcmp(app, pending_.data(), size_t(m)) != 0) {
      compare_ = kDiverged;
      host_->pipes().Give(&cmp_);  // closed, not pooled, when it still holds bytes
      pending_.clear();
      return;
    }
    compared_ += uint64_t(m);
    pending_.erase(0, size_t(m));
  }
}

void MirrorLeg::StopComparing() {
  if (compare_ == kComparing) compare_ = kUncompared;
  host_->pipes().Give(&cmp_);
  pending_.clear();
  pending_.shrink_to_fit();
}

void MirrorLeg::CompareVerdict() {
  if (compare_ == kComparing) {
    ComparePending();
    // Same bytes as far as both went; a different length is a difference too.
    if (compare_ == kComparing && appAnswerBytes_ != targetAnswerBytes_) compare_ = kDiverged;
  }
  if (compare_ == kComparing || compare_ == kDiverged) Add(slot_.responsesCompared);
  if (compare_ == kDiverged) Add(slot_.responsesDiverged);
  StopComparing();
  compare_ = kCompareOff;
}

void MirrorLeg::Finish() {
  if (state_ == kClosed) return;
  CompareVerdict();
  CloseFd(sock_);
  Close();
}

void MirrorLeg::Abort() {
  if (state_ == kClosed) return;
  // Bytes the target will never get make this a cut; an idle mirror of a reset connection just ends
  // with a reset, like the connection it copies.
  if (!queue_.empty() || pipe_.bytes > 0 || spilledBytes() > 0 || (state_ == kOpen && UnsentBytes(sock_) > 0)) {
    Cut(0);
    return;
  }
  if (!CloseWithReset(sock_)) Add(host_->counters().resetFailures);
  Close();
}

void MirrorLeg::Close() {
  state_ = kClosed;
  Add(slot_.connectionsClosed);
  queue_.clear();
  host_->pipes().Discard(&pipe_);
  StopComparing();
  ReleaseSpill();
  CloseFd(spillFd_);
  if (granted_) host_->ReleaseMirrorBuffer(granted_);
  granted_ = 0;
  connectDeadline_ = gateDeadline_ = drainDeadline_ = xfRetryAt_ = xfHoldAt_ = 0;
  xf_.Release();
  host_->SetTimer(this, 0);
}

}  // namespace engine
}  // namespace kstreams
