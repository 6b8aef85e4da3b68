// Why the file leg works the way it does (see capture.h for the writer):
//  - Offsets are counted here, as bytes are tee'd: the writer writes exactly those bytes in that order,
//    so a turn record's offsets are file offsets. The writer only writes a record after the bytes before
//    it, so an index never names bytes its files do not have.
//  - maxBytes is taken from the session's atomic reservation before each copy, across all workers; the
//    last batch that fits in part is copied in part (tee() takes a length), so a full capture holds
//    exactly maxBytes. maxConnectionBytes the same way per connection.
//  - A tee() that copies less than the batch (the pipe is full: the writer is behind) keeps what it
//    copied, a prefix of the stream, and cuts the capture there.
#include "file_leg.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "connection.h"
#include "sockets.h"

namespace kstreams {
namespace engine {

namespace {

std::string Endpoint(const SockAddr& a) {
  SockAddr u = Unmap(a);
  std::string host = FormatHost(u);
  if (u.family() == AF_INET6) host = "[" + host + "]";
  return host + ":" + std::to_string(Port(u));
}

std::string IsoWall() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char buf[64];
  snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
           tm.tm_hour, tm.tm_min, tm.tm_sec, long(ts.tv_nsec / 1000000));
  return buf;
}

// A capture pipe of at least `want` bytes; false when the kernel refuses it (fds, the pipe budget).
bool MakePipe(uint32_t want, int* rd, int* wr) {
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
  if (ResizePipe(fds[0], want) < want) {
    close(fds[0]);
    close(fds[1]);
    return false;
  }
  *rd = fds[0];
  *wr = fds[1];
  return true;
}

}  // namespace

FileLeg::FileLeg(LegHost* host, Conn* owner, const ActiveTarget& target, uint32_t pipeCapacity, uint32_t slack)
    : Leg(owner),
      host_(host),
      session_(target.capture),
      target_(target.counters),
      slot_(target.counters->at(host->workerIndex())),
      pipeCapacity_(uint32_t(RoundPipeSize(pipeCapacity))),
      slack_(uint32_t(RoundPipeSize(slack))) {}

FileLeg::~FileLeg() {
  if (!closed_) End("rst");
}

void FileLeg::Open(const SockAddr& client, const SockAddr& server) {
  uint64_t id = session_->NextId();
  if (id == 0) {
    Add(slot_.connectionsNotRecorded);
    dropping_ = true;
    closed_ = true;
    return;
  }
  auto c = std::make_shared<CaptureConn>();
  c->id = id;
  bool responses = session_->spec().responses;
  // The pipes are the capture's only slack: a writer starved of CPU for a moment (or a disk that stalls)
  // must not cut it at once. Larger pipes are granted from the mirror budget, like a lagging mirror's
  // send buffer; without the grant (or when the kernel refuses the size) they take whole batches of P.
  uint32_t size = pipeCapacity_;
  if (slack_ > pipeCapacity_) {
    uint64_t want = uint64_t(slack_ - pipeCapacity_) * (responses ? 2 : 1);
    if (host_->GrantMirrorBuffer(want)) {
      granted_ = want;
      size = slack_;
    } else {
      Add(host_->counters().mirrorBufferDenied);
    }
  }
  bool ok = MakePipe(size, &c->c2sRd, &c->c2sWr) && (!responses || MakePipe(size, &c->s2cRd, &c->s2cWr));
  if (!ok && size > pipeCapacity_) {
    for (int* fd : {&c->c2sRd, &c->c2sWr, &c->s2cRd, &c->s2cWr}) CloseFd(*fd);
    host_->ReleaseMirrorBuffer(granted_);
    granted_ = 0;
    ok = MakePipe(pipeCapacity_, &c->c2sRd, &c->c2sWr) && (!responses || MakePipe(pipeCapacity_, &c->s2cRd, &c->s2cWr));
  }
  if (!ok) {
    // The id stays unused: a gap in the numbering, never a file.
    Add(slot_.connectionsSkipped);
    dropping_ = true;
    Close();
    return;
  }
  Add(slot_.connectionsMirrored);
  conn_ = c;
  CaptureOp op(CaptureOp::kOpen, conn_);
  op.ns = MonotonicNs();
  op.text = ",\"at\":\"" + IsoWall() + "\",\"client\":\"" + Endpoint(client) + "\",\"server\":\"" + Endpoint(server) + "\"";
  session_->Post(std::move(op));
}

bool FileLeg::Copy(const Pipe& from, size_t n, bool c2s, size_t* taken) {
  if (taken) *taken = n;
  if (conn_->failed.load(std::memory_order_relaxed)) {
    Cut(Why::kDisk, c2s ? n : 0);
    return false;
  }
  size_t want = n;
  const CaptureSpec& spec = session_->spec();
  if (spec.maxConnectionBytes) {
    uint64_t used = c2s_ + s2c_;
    want = size_t(std::min<uint64_t>(want, used >= spec.maxConnectionBytes ? 0 : spec.maxConnectionBytes - used));
  }
  if (want) want = size_t(session_->Reserve(want));
  ssize_t t = want ? tee(from.rd, c2s ? conn_->c2sWr : conn_->s2cWr, want, SPLICE_F_NONBLOCK) : 0;
  size_t copied = t > 0 ? size_t(t) : 0;
  if (copied) {
    (c2s ? c2s_ : s2c_) += copied;
    CaptureOp op(c2s ? CaptureOp::kC2s : CaptureOp::kS2c, conn_);
    op.bytes = copied;
    session_->Post(std::move(op));
  }
  if (copied == n) return true;
  if (copied < want) session_->Unreserve(want - copied);
  if (taken && copied < want) {
    // The writer is behind: the rest stays in P, the client unread, until the pipe has room.
    *taken = copied;
    host_->SetTimer(this, NowMs() + kHoldRetryMs);
    return true;
  }
  Cut(copied < want ? Why::kSlow : Why::kFull, c2s ? n - copied : 0);
  return false;
}

void FileLeg::StartTurn(uint32_t turn) {
  if (started_ && turn == lastTurn_) return;
  started_ = true;
  lastTurn_ = turn;
  CaptureOp op(CaptureOp::kTurn, conn_);
  op.ns = MonotonicNs();
  op.turn = ++turns_;
  op.c2s = c2s_;
  op.s2c = s2c_;
  session_->Post(std::move(op));
}

void FileLeg::Offer(const Pipe& p, size_t n, uint32_t turn) {
  if (closed_) {
    if (dropping_) Add(slot_.bytesDropped, n);
    return;
  }
  StartTurn(turn);
  Copy(p, n, true);
}

size_t FileLeg::OfferHeld(const Pipe& p, size_t n, uint32_t turn) {
  if (closed_) {
    if (dropping_) Add(slot_.bytesDropped, n);
    return n;
  }
  StartTurn(turn);
  size_t taken = n;
  Copy(p, n, true, &taken);
  // Counted once per hold, not per retry.
  if (taken < n && !holding_) Add(slot_.captureHolds);
  holding_ = taken < n;
  return taken;
}

void FileLeg::OfferResponse(const Pipe& r, size_t n) {
  if (closed_ || !session_->spec().responses) return;
  Copy(r, n, false);
}

bool FileLeg::Pump() {
  // A write failed while the connection is quiet: end its record now rather than at its next bytes.
  if (!closed_ && conn_ && conn_->failed.load(std::memory_order_relaxed)) {
    Cut(Why::kDisk, 0);
    return true;
  }
  return false;
}

void FileLeg::Cut(Why why, size_t alsoLost) {
  if (closed_) return;
  // A disk cut is counted by the writer, which saw the failure (also when the connection ended first).
  if (why != Why::kDisk) Add(slot_.connectionsCut);
  if (why == Why::kFull) Add(slot_.capturesCutFull);
  if (why == Why::kSlow) Add(slot_.capturesCutSlow);
  Add(slot_.bytesDropped, alsoLost);
  dropping_ = true;
  End(why == Why::kDisk ? "disk" : "cut");
}

void FileLeg::End(const char* how) {
  if (closed_) return;
  CaptureOp op(CaptureOp::kEnd, conn_);
  op.ns = MonotonicNs();
  op.text = how;
  session_->Post(std::move(op));
  conn_.reset();
  Close();
}

void FileLeg::Close() {
  closed_ = true;
  holding_ = false;
  host_->SetTimer(this, 0);  // a hold's retry: the connection may be freed before it is due
  // What the pipes still hold is the writer's now; the budget is for what the worker may add.
  if (granted_) host_->ReleaseMirrorBuffer(granted_);
  granted_ = 0;
  Add(slot_.connectionsClosed);
}

}  // namespace engine
}  // namespace kstreams
