// Why the file leg works the way it does (see capture.h for the writer):
//  - Offsets are counted here, as bytes are tee'd: the writer writes exactly those bytes in that order,
//    so a turn record's offsets are file offsets. The writer only writes a record after the bytes before
//    it, so an index never names bytes its files do not have.
//  - A lane's bytes go P -> capture pipe (tee) -> socket pair (splice: the pages are referenced, not
//    copied) -> the writer's own pipe -> the data file. The worker and the writer share no pipe while the
//    leg lives: a splice into a file holds its source pipe's lock for the whole write (page cache, ext4,
//    a stall of the disk or of the writer's CPU), and a tee() into that pipe, SPLICE_F_NONBLOCK or not,
//    would wait for that lock on the worker - every connection of the worker stalled. The sockets' locks
//    are never held across a write to the disk.
//  - A data op is posted only once its bytes are in the socket, so the writer never waits for bytes; ops
//    behind bytes still in a pipe (the socket was full) wait in held_, in order, until they got there. At
//    the leg's end the worker lets go of the pipes: what is still in them is posted `fromPipe`, and the
//    writer splices it from the pipe after the socket's bytes.
//  - The socket's send buffer is the lane's slack: it starts at kStartBuffer and grows, once the writer
//    falls behind (EAGAIN), to the mirror's bufferSize from the engine's mirror budget, like a lagging
//    mirror's send buffer; it shrinks back at a turn boundary that finds the lane empty. Socket memory is
//    not charged to the per-user pipe budget, and needs no F_SETPIPE_SZ beyond fs.pipe-max-size.
//  - maxBytes is taken from the session's atomic reservation before each copy, across all workers; the
//    last batch that fits in part is copied in part (tee() takes a length), so a full capture holds
//    exactly maxBytes. maxConnectionBytes the same way per connection.
//  - A tee() that copies less than the batch (pipe and socket full: the writer is behind) keeps what it
//    copied, a prefix of the stream, and cuts the capture there.
#include "file_leg.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
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

void SetSendBuffer(int fd, uint64_t bytes) {
  int v = int(std::min<uint64_t>(bytes, 1u << 30));
  // FORCE passes net.core.wmem_max when we have CAP_NET_ADMIN; else the plain option, capped there.
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof v) != 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
}

}  // namespace

FileLeg::FileLeg(LegHost* host, Conn* owner, const ActiveTarget& target, uint32_t pipeCapacity, uint32_t slack)
    : Leg(owner),
      host_(host),
      handle_{owner, Handle::kLeg, this},
      session_(target.capture),
      target_(target.counters),
      slot_(target.counters->at(host->workerIndex())),
      pipeCapacity_(uint32_t(RoundPipeSize(pipeCapacity))),
      slack_(slack) {}

FileLeg::~FileLeg() {
  if (!closed_) End("rst");
}

bool FileLeg::MakeLane(Lane& l, int* writerSock, int* pipeRd, int* pipeWr) {
  if (!MakePipe(pipeCapacity_, pipeRd, pipeWr)) return false;
  l.pipeRd = *pipeRd;
  l.pipeWr = *pipeWr;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) return false;
  l.sock = sv[0];
  *writerSock = sv[1];
  shutdown(l.sock, SHUT_RD);
  SetSendBuffer(l.sock, kStartBuffer);
  // Writability pumps the connection: bytes left in the pipe move on once the writer made room.
  return host_->Watch(l.sock, &handle_, EPOLLOUT | EPOLLET);
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
  bool ok = MakeLane(lanes_[0], &c->c2sSock, &c->c2sRd, &c->c2sWr) &&
            (!responses || MakeLane(lanes_[1], &c->s2cSock, &c->s2cRd, &c->s2cWr));
  if (!ok) {
    // The id stays unused: a gap in the numbering, never a file. CaptureConn closes its fds.
    for (Lane& l : lanes_) CloseFd(l.sock);
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

bool FileLeg::Grow(Lane& l) {
  if (l.grown || slack_ <= kStartBuffer) return false;
  l.grown = true;
  // All of bufferSize if the budget has it, else what it has: a partly grown buffer still absorbs more.
  uint64_t got = host_->GrantMirrorBufferUpTo(slack_, 2ull * kStartBuffer);
  if (got < slack_) Add(host_->counters().mirrorBufferDenied);
  if (!got) return false;
  l.granted = got;
  SetSendBuffer(l.sock, got);
  return true;
}

void FileLeg::MaybeShrink() {
  for (Lane& l : lanes_) {
    if (!l.granted || l.inPipe) continue;
    // A unix socket's SIOCOUTQ: what the writer has not read yet.
    if (UnsentBytes(l.sock) != 0) continue;
    SetSendBuffer(l.sock, kStartBuffer);
    host_->ReleaseMirrorBuffer(l.granted);
    l.granted = 0;
    l.grown = false;
  }
}

bool FileLeg::Push(Lane& l, bool* failed) {
  bool moved = false;
  while (l.inPipe > 0) {
    ssize_t n = splice(l.pipeRd, nullptr, l.sock, nullptr, size_t(l.inPipe), SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
      l.inPipe -= uint64_t(n);
      l.pushed += uint64_t(n);
      moved = true;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      if (!Grow(l)) break;  // grown: room again at once
    } else {
      *failed = true;  // the writer's end is gone (ENOMEM, EPIPE): cannot happen while the leg lives
      break;
    }
  }
  return moved;
}

bool FileLeg::Flush(bool* failed) {
  bool moved = false;
  for (Lane& l : lanes_)
    if (l.inPipe) moved |= Push(l, failed);
  while (!held_.empty()) {
    CaptureOp& op = held_.front();
    if (op.kind == CaptureOp::kC2s || op.kind == CaptureOp::kS2c) {
      Lane& l = lanes_[op.kind == CaptureOp::kC2s ? 0 : 1];
      uint64_t ready = l.pushed - l.posted;
      if (ready == 0) break;
      if (ready < op.bytes) {
        CaptureOp part(op.kind, op.conn);
        part.bytes = ready;
        op.bytes -= ready;
        l.posted += ready;
        session_->Post(std::move(part));
        break;
      }
      l.posted += op.bytes;
    }
    session_->Post(std::move(op));
    held_.pop_front();
  }
  return moved;
}

void FileLeg::Emit(CaptureOp&& op) {
  bool data = op.kind == CaptureOp::kC2s || op.kind == CaptureOp::kS2c;
  if (data && !held_.empty() && held_.back().kind == op.kind) {
    held_.back().bytes += op.bytes;
  } else {
    held_.push_back(std::move(op));
  }
  bool failed = false;
  Flush(&failed);
  (void)failed;  // seen by the next Copy through the same refusal
}

bool FileLeg::Copy(const Pipe& from, size_t n, bool c2s, size_t* taken) {
  if (taken) *taken = n;
  bool failed = conn_->failed.load(std::memory_order_relaxed);
  // Room first: what the last batch left in the pipe goes on into the socket.
  if (!failed) Flush(&failed);
  if (failed) {
    Cut(Why::kDisk, c2s ? n : 0);
    return false;
  }
  Lane& l = lanes_[c2s ? 0 : 1];
  size_t want = n;
  const CaptureSpec& spec = session_->spec();
  if (spec.maxConnectionBytes) {
    uint64_t used = c2s_ + s2c_;
    want = size_t(std::min<uint64_t>(want, used >= spec.maxConnectionBytes ? 0 : spec.maxConnectionBytes - used));
  }
  if (want) want = size_t(session_->Reserve(want));
  ssize_t t = want ? tee(from.rd, l.pipeWr, want, SPLICE_F_NONBLOCK) : 0;
  size_t copied = t > 0 ? size_t(t) : 0;
  if (copied) {
    (c2s ? c2s_ : s2c_) += copied;
    l.inPipe += copied;
    CaptureOp op(c2s ? CaptureOp::kC2s : CaptureOp::kS2c, conn_);
    op.bytes = copied;
    Emit(std::move(op));
  }
  if (copied == n) return true;
  if (copied < want) session_->Unreserve(want - copied);
  if (taken && copied < want) {
    // The writer is behind: the rest stays in P, the client unread, until the lane has room.
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
  // A new turn of a conversation: a lane that grew while the writer was behind gives its buffer back
  // once it is empty (keep-alive connections idle most of the time; a bulk stream is one turn).
  if (turns_ > 1) MaybeShrink();
  Emit(std::move(op));
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
  if (closed_ || !conn_) return false;
  // A write failed while the connection is quiet: end its record now rather than at its next bytes.
  bool failed = conn_->failed.load(std::memory_order_relaxed);
  // Bytes left in a pipe (every byte tee'd has its op in held_ until it is posted) move on once the
  // writer made room: its socket's writability pumps the connection.
  bool moved = !failed && !held_.empty() && Flush(&failed);
  if (failed) {
    Cut(Why::kDisk, 0);
    return true;
  }
  return moved;
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
  bool failed = false;
  Flush(&failed);
  // What the sockets could not take is still in the pipes, behind what they hold: the writer takes it
  // from there (the worker lets go of the pipes now), in the same order as every other op.
  while (!held_.empty()) {
    CaptureOp& op = held_.front();
    if (op.kind == CaptureOp::kC2s || op.kind == CaptureOp::kS2c) {
      Lane& l = lanes_[op.kind == CaptureOp::kC2s ? 0 : 1];
      uint64_t ready = std::min(l.pushed - l.posted, op.bytes);
      if (ready) {
        CaptureOp part(op.kind, op.conn);
        part.bytes = ready;
        session_->Post(std::move(part));
        op.bytes -= ready;
        l.posted += ready;
      }
      if (op.bytes) {
        op.fromPipe = true;
        l.posted += op.bytes;
        session_->Post(std::move(op));
      }
    } else {
      session_->Post(std::move(op));
    }
    held_.pop_front();
  }
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
  // What the sockets still hold is the writer's now (its ends stay open until it wrote the end); the
  // budget is for what the worker may add.
  for (Lane& l : lanes_) {
    CloseFd(l.sock);  // also takes it out of the worker's epoll set
    if (l.granted) host_->ReleaseMirrorBuffer(l.granted);
    l.granted = 0;
    l.pipeRd = l.pipeWr = -1;
  }
  Add(slot_.connectionsClosed);
}

}  // namespace engine
}  // namespace kstreams
