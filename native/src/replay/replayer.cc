#include "replayer.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <set>
#include <unordered_set>

#include "../engine/sockets.h"

namespace kstreams {
namespace replay {

namespace {

using engine::CloseFd;
using engine::CloseWithReset;

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

constexpr uint64_t kMs = 1000000;
// Bytes one connection sends per round before the others' events are served.
constexpr uint64_t kBurst = 4u << 20;
constexpr size_t kBuf = 64 * 1024;
// The longest wait for the last answer before the FIN goes anyway (see gateOpen).
constexpr uint64_t kFinGraceMs = 1000;

}  // namespace

const char* FailureName(int failure) {
  switch (failure) {
    case kConnect: return "connect";
    case kReset: return "reset";
    case kClosed: return "closed";
    case kStalled: return "stalled";
    case kFile: return "file";
    default: return "unknown";
  }
}

struct Replayer::Counters {
  std::atomic<uint64_t> started{0}, replayed{0}, failed{0}, active{0};
  std::atomic<uint64_t> bytesSent{0}, bytesReceived{0}, turns{0}, turnWaitsExpired{0};
  std::atomic<uint64_t> same{0}, differ{0}, loop{0};
  std::atomic<uint64_t> failures[kFailureKinds] = {};
};

// One connection being replayed.
struct Replayer::Live {
  enum Phase { kConnecting, kGate, kPace, kSending, kClosing };
  const ConnSpec* spec = nullptr;
  uint32_t index = 0, loop = 0;
  int sock = -1, c2s = -1, s2c = -1;
  Phase phase = kConnecting;
  size_t turn = 0;  // the next turn to send (turns.size(): the end)
  off_t sendOff = 0;
  uint64_t sendEnd = 0;
  uint64_t received = 0;
  uint64_t sent = 0;
  // Where the last answer wait ended: in the recording's s2c, and in the bytes received.
  uint64_t baseRecorded = 0, baseReceived = 0;
  uint64_t startedAt = 0;      // when the connect began
  uint64_t gateSince = 0;
  uint64_t lastRecvAt = 0;
  uint64_t lastSendProgress = 0;
  bool answeredSinceSend = false;
  bool readable = false, writable = false, eof = false, queued = false;
  uint64_t timerAt = 0;
  Outcome out;
};

Replayer::Replayer(Config config, std::vector<ConnSpec> conns)
    : config_(std::move(config)), conns_(std::move(conns)), k_(std::make_unique<Counters>()) {}

Replayer::~Replayer() {
  Cancel();
  Wait();
  CloseFd(epfd_);
  CloseFd(wakeFd_);
}

std::unique_ptr<Replayer> Replayer::Start(Config config, std::vector<ConnSpec> conns, StartError* error) {
  std::unique_ptr<Replayer> r(new Replayer(std::move(config), std::move(conns)));
  r->wakeFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (r->wakeFd_ < 0) {
    *error = {errno, "eventfd", "replayer"};
    r->joined_ = true;
    return nullptr;
  }
  std::mutex mu;
  std::condition_variable cv;
  bool ready = false, ok = false;
  Replayer* self = r.get();
  r->thread_ = std::thread([&, self] {
    bool good = self->Setup(error);
    {
      std::lock_guard<std::mutex> lock(mu);
      ready = true;
      ok = good;
    }
    cv.notify_one();
    if (good) self->Run();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return ready; });
  lock.unlock();
  if (!ok) {
    r->thread_.join();
    r->joined_ = true;
    return nullptr;
  }
  return r;
}

bool Replayer::Setup(StartError* error) {
  auto fail = [error](const char* syscall, const std::string& what) {
    error->err = errno;
    error->syscall = syscall;
    error->what = what;
    return false;
  };
  if (!config_.netnsPath.empty()) {
    const char* syscall = "";
    if (!engine::EnterNetns(config_.netnsPath, &syscall)) return fail(syscall, "network namespace " + config_.netnsPath);
  }
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return fail("epoll_create1", "replayer");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, wakeFd_, &ev) != 0) return fail("epoll_ctl", "replayer wake-up eventfd");
  return true;
}

Stats Replayer::Snapshot() const {
  Stats s;
  const Counters& k = *k_;
  s.started = k.started.load(std::memory_order_relaxed);
  s.replayed = k.replayed.load(std::memory_order_relaxed);
  s.failed = k.failed.load(std::memory_order_relaxed);
  s.active = k.active.load(std::memory_order_relaxed);
  s.bytesSent = k.bytesSent.load(std::memory_order_relaxed);
  s.bytesReceived = k.bytesReceived.load(std::memory_order_relaxed);
  s.turns = k.turns.load(std::memory_order_relaxed);
  s.turnWaitsExpired = k.turnWaitsExpired.load(std::memory_order_relaxed);
  s.same = k.same.load(std::memory_order_relaxed);
  s.differ = k.differ.load(std::memory_order_relaxed);
  s.loop = k.loop.load(std::memory_order_relaxed);
  for (int i = 0; i < kFailureKinds; i++) s.failures[i] = k.failures[i].load(std::memory_order_relaxed);
  return s;
}

void Replayer::Cancel() {
  cancel_.store(true);
  if (wakeFd_ >= 0) {
    uint64_t one = 1;
    ssize_t n = write(wakeFd_, &one, sizeof one);
    (void)n;
  }
}

const Result& Replayer::Wait() {
  std::lock_guard<std::mutex> lock(joinMu_);
  if (!joined_) {
    if (thread_.joinable()) thread_.join();
    joined_ = true;
  }
  return result_;
}

// The loop. Everything below runs on the replayer's thread only.
void Replayer::Run() {
  const Config& cfg = config_;
  Counters& k = *k_;
  const uint64_t begin = NowNs();
  std::vector<uint32_t> order(conns_.size());
  for (uint32_t i = 0; i < order.size(); i++) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return conns_[a].startNs < conns_[b].startNs; });
  // Happens-before across connections: one that opened after another had ended in the recording starts
  // only once that other has finished in the replay, at every speed (a target slower than recorded, or
  // --speed max, would otherwise reorder them). byEnd sorts the connections by their recorded end;
  // completed counts the prefix of byEnd that has finished in this pass. Since connections start in
  // open order and the set a connection waits for only grows with its open time, checking the next one
  // to start is enough: O(n log n) per capture, O(1) amortized per start. Overlapping connections do not
  // wait for each other.
  std::vector<uint32_t> byEnd(conns_.size());
  for (uint32_t i = 0; i < byEnd.size(); i++) byEnd[i] = i;
  std::stable_sort(byEnd.begin(), byEnd.end(), [&](uint32_t a, uint32_t b) { return conns_[a].endNs < conns_[b].endNs; });
  std::vector<char> finished(conns_.size(), 0);
  size_t completed = 0;
  auto predecessorsDone = [&](uint32_t index) {
    while (completed < byEnd.size() && finished[byEnd[completed]]) completed++;
    return completed >= byEnd.size() || conns_[byEnd[completed]].endNs >= conns_[index].startNs;
  };

  std::unordered_set<Live*> active;
  std::set<std::pair<uint64_t, Live*>> timers;
  std::deque<Live*> ready;
  std::vector<char> got(kBuf), want(kBuf);
  bool everConnected = false;
  uint32_t loop = 0;
  size_t next = 0;
  uint64_t loopStart = begin;
  auto scaled = [&](uint64_t ns) -> uint64_t { return cfg.speed > 0 ? uint64_t(double(ns) / cfg.speed) : 0; };

  auto setTimer = [&](Live* c, uint64_t at) {
    if (c->timerAt == at) return;
    if (c->timerAt) timers.erase({c->timerAt, c});
    c->timerAt = at;
    if (at) timers.insert({at, c});
  };

  auto excerpt = [&](int fd, uint64_t at, std::string* out) {
    out->clear();
    if (fd < 0) return;
    char b[Replayer::kExcerpt];
    ssize_t n = pread(fd, b, sizeof b, off_t(at));
    if (n > 0) out->assign(b, size_t(n));
  };

  auto finish = [&](Live* c, int failure, int err, const char* syscall) {
    Outcome& o = c->out;
    if (failure >= 0) {
      o.failure = failure;
      o.err = err;
      o.syscall = syscall ? syscall : "";
    }
    if (cfg.compare && c->spec->responses && failure < 0 && !o.differs && c->received < c->spec->endS2c) {
      // Fewer bytes than recorded.
      o.differs = true;
      o.differsAt = c->received;
      o.got.clear();
      excerpt(c->s2c, c->received, &o.want);
    }
    if (failure >= 0 || c->spec->how != End::kFin) CloseWithReset(c->sock);
    else CloseFd(c->sock);
    CloseFd(c->c2s);
    CloseFd(c->s2c);
    setTimer(c, 0);
    o.bytesSent = c->sent;
    o.bytesReceived = c->received;
    if (failure >= 0) {
      k.failed.fetch_add(1, std::memory_order_relaxed);
      k.failures[failure].fetch_add(1, std::memory_order_relaxed);
    } else {
      k.replayed.fetch_add(1, std::memory_order_relaxed);
    }
    if (cfg.compare && c->spec->responses && failure < 0) (o.differs ? k.differ : k.same).fetch_add(1, std::memory_order_relaxed);
    if (failure >= 0 || o.differs) result_.outcomes.push_back(std::move(o));
    if (c->queued) ready.erase(std::find(ready.begin(), ready.end(), c));
    finished[c->index] = 1;
    active.erase(c);
    k.active.store(active.size(), std::memory_order_relaxed);
    delete c;
  };

  auto watch = [&](Live* c) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = c;
    return epoll_ctl(epfd_, EPOLL_CTL_ADD, c->sock, &ev) == 0;
  };

  auto abortUnreachable = [&](int err, const char* syscall) {
    result_.aborted = true;
    result_.abortErr = err;
    result_.abortSyscall = syscall;
  };

  auto start = [&](uint32_t index, uint64_t now) {
    const ConnSpec& spec = conns_[index];
    Live* c = new Live;
    c->spec = &spec;
    c->index = index;
    c->loop = loop;
    c->out.conn = index;
    c->out.loop = loop;
    c->startedAt = now;
    active.insert(c);
    k.started.fetch_add(1, std::memory_order_relaxed);
    k.active.store(active.size(), std::memory_order_relaxed);
    c->c2s = open(spec.c2sPath.c_str(), O_RDONLY | O_CLOEXEC);
    if (c->c2s < 0) return finish(c, kFile, errno, "open");
    if (cfg.compare && !spec.s2cPath.empty()) {
      c->s2c = open(spec.s2cPath.c_str(), O_RDONLY | O_CLOEXEC);
      if (c->s2c < 0) return finish(c, kFile, errno, "open");
    }
    c->sock = socket(cfg.target.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->sock < 0) return finish(c, kConnect, errno, "socket");
    engine::SetNoDelay(c->sock);
    if (connect(c->sock, cfg.target.sa(), cfg.target.len) != 0 && errno != EINPROGRESS) {
      if (!everConnected) abortUnreachable(errno, "connect");
      return finish(c, kConnect, errno, "connect");
    }
    if (!watch(c)) return finish(c, kConnect, errno, "epoll_ctl");
    c->phase = Live::kConnecting;
    setTimer(c, now + cfg.connectTimeoutMs * kMs);
  };

  // Reads what the target sent: compared with the recording, or discarded in the kernel. False when the
  // connection ended (failed).
  auto receive = [&](Live* c, uint64_t now) -> bool {
    while (c->readable && !c->eof) {
      // Compared until the first difference, then only counted.
      const bool comparing = cfg.compare && c->spec->responses && !c->out.differs;
      // After a difference, the target's excerpt is filled up from the next answers too.
      const bool excerpting = c->out.differs && c->out.got.size() < kExcerpt;
      ssize_t n = comparing || excerpting ? recv(c->sock, got.data(), got.size(), MSG_DONTWAIT)
                                          : recv(c->sock, nullptr, 1 << 20, MSG_TRUNC | MSG_DONTWAIT);
      if (n > 0 && excerpting) c->out.got.append(got.data(), std::min<size_t>(size_t(n), kExcerpt - c->out.got.size()));
      if (n > 0) {
        if (comparing) {
          const uint64_t at = c->received;
          const uint64_t recorded = c->spec->endS2c;
          size_t avail = at < recorded ? size_t(std::min<uint64_t>(uint64_t(n), recorded - at)) : 0;
          size_t have = 0;
          if (avail && c->s2c >= 0) {
            ssize_t r = pread(c->s2c, want.data(), avail, off_t(at));
            have = r > 0 ? size_t(r) : 0;
          }
          size_t same = 0;
          while (same < have && got[same] == want[same]) same++;
          // same == n: every byte matched the recording; else the first that did not, or the first the
          // recording does not have.
          if (same < size_t(n)) {
            c->out.differs = true;
            c->out.differsAt = at + same;
            c->out.got.assign(got.data() + same, std::min<size_t>(size_t(n) - same, kExcerpt));
            excerpt(c->s2c, at + same, &c->out.want);
          }
        }
        c->received += uint64_t(n);
        k.bytesReceived.fetch_add(uint64_t(n), std::memory_order_relaxed);
        c->lastRecvAt = now;
        c->answeredSinceSend = true;
        continue;
      }
      if (n == 0) {
        c->eof = true;
        break;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        c->readable = false;
        break;
      }
      if (errno == EINTR) continue;
      if (c->phase == Live::kClosing) {
        // Reset after our FIN: the conversation was over.
        c->eof = true;
        break;
      }
      finish(c, kReset, errno, "recv");
      return false;
    }
    return true;
  };

  // Is the wait before turn c->turn (or before the end) over? Sets the timer when not.
  //
  // With responses, the wait is for as many bytes as the app sent in the recording between the previous
  // turn and this one, counted from where the previous wait ended (so an answer a few bytes longer or
  // shorter than recorded, like a counter's value, does not shift every later wait); an answer that
  // stays short ends its wait after quietMs of silence. Without responses: first bytes, then quietMs of
  // silence. In both, answerTimeoutMs at most (counted in turnWaitsExpired).
  auto gateOpen = [&](Live* c, uint64_t now) -> bool {
    const ConnSpec& s = *c->spec;
    const bool last = c->turn >= s.turns.size();
    // Before the FIN the wait is short: some apps answer the last turn only after the client's FIN (a
    // sink that acknowledges what it got), and a FIN does not stop an answer: it is still read, and
    // compared, until the target ends (answerTimeoutMs).
    const bool beforeFin = last && s.how == End::kFin;
    const uint64_t deadline = c->gateSince + (beforeFin ? std::min<uint64_t>(cfg.answerTimeoutMs, kFinGraceMs) : cfg.answerTimeoutMs) * kMs;
    if (c->eof) return true;  // nothing more will come
    if (s.responses) {
      const uint64_t recorded = last ? s.endS2c : s.turns[c->turn].s2c;
      if (c->received >= c->baseReceived + (recorded - std::min(recorded, c->baseRecorded))) return true;
    } else if (c->turn == 0 || (last && s.how == End::kFin)) {
      // Nothing to wait for before the first turn; at the end, the FIN and the wait for the target's own
      // end take the last answer.
      return true;
    }
    if (c->answeredSinceSend) {
      const uint64_t quietUntil = c->lastRecvAt + cfg.quietMs * kMs;
      if (now >= quietUntil) return true;
      if (now < deadline) {
        setTimer(c, std::min(quietUntil, deadline));
        return false;
      }
    }
    if (now >= deadline) {
      if (!beforeFin) k.turnWaitsExpired.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    setTimer(c, deadline);
    return false;
  };

  // Moves a connection forward until it has to wait. False when it ended.
  auto advance = [&](Live* c, uint64_t now) -> bool {
    const ConnSpec& s = *c->spec;
    uint64_t burst = 0;
    for (;;) {
      switch (c->phase) {
        case Live::kConnecting:
          return true;
        case Live::kGate: {
          if (!gateOpen(c, now)) return true;
          setTimer(c, 0);
          c->baseRecorded = c->turn < s.turns.size() ? s.turns[c->turn].s2c : s.endS2c;
          c->baseReceived = c->received;
          if (c->turn < s.turns.size()) {
            c->phase = Live::kPace;
            continue;
          }
          if (s.how != End::kFin) {
            finish(c, -1, 0, nullptr);  // reset, as recorded (rst), or because the recording is a prefix (cut)
            return false;
          }
          if (c->eof) {
            finish(c, -1, 0, nullptr);
            return false;
          }
          shutdown(c->sock, SHUT_WR);
          c->phase = Live::kClosing;
          setTimer(c, now + cfg.answerTimeoutMs * kMs);
          return true;
        }
        case Live::kPace: {
          // Due at its recorded offset from the connection's open, scaled: a turn held back by a slow
          // answer does not push the later ones back (the recorded pauses absorb it), so the replay takes
          // the recorded time divided by the speed whenever the target keeps up on the whole.
          uint64_t due = c->startedAt + scaled(s.turns[c->turn].atNs);
          if (now < due) {
            setTimer(c, due);
            return true;
          }
          setTimer(c, 0);
          if (c->eof) {
            // The target ended its side while the recording still has client turns.
            finish(c, kClosed, 0, "recv");
            return false;
          }
          c->sendOff = off_t(s.turns[c->turn].c2s);
          c->sendEnd = c->turn + 1 < s.turns.size() ? s.turns[c->turn + 1].c2s : s.endC2s;
          c->lastSendProgress = now;
          c->phase = Live::kSending;
          continue;
        }
        case Live::kSending: {
          while (uint64_t(c->sendOff) < c->sendEnd) {
            if (!c->writable) {
              setTimer(c, c->lastSendProgress + cfg.stallTimeoutMs * kMs);
              return true;
            }
            if (burst >= kBurst) {
              if (!c->queued) {
                c->queued = true;
                ready.push_back(c);
              }
              return true;
            }
            size_t want = size_t(std::min<uint64_t>(c->sendEnd - uint64_t(c->sendOff), 1u << 30));
            ssize_t n = sendfile(c->sock, c->c2s, &c->sendOff, want);
            if (n > 0) {
              c->sent += uint64_t(n);
              burst += uint64_t(n);
              k.bytesSent.fetch_add(uint64_t(n), std::memory_order_relaxed);
              c->lastSendProgress = now;
              continue;
            }
            if (n == 0) {
              finish(c, kFile, EIO, "sendfile");  // the file ends before the index said
              return false;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
              c->writable = false;
              continue;
            }
            if (errno == EINTR) continue;
            // EPIPE, ECONNRESET: the target reset the connection, or closed it and then reset our bytes.
            finish(c, kReset, errno, "sendfile");
            return false;
          }
          setTimer(c, 0);
          c->turn++;
          k.turns.fetch_add(1, std::memory_order_relaxed);
          c->out.turnsSent++;
          c->answeredSinceSend = false;
          c->gateSince = now;
          c->phase = Live::kGate;
          continue;
        }
        case Live::kClosing:
          if (c->eof) {
            finish(c, -1, 0, nullptr);
            return false;
          }
          return true;
      }
    }
  };

  auto onConnected = [&](Live* c, uint64_t now) -> bool {
    int err = engine::ConnectError(c->sock);
    if (err != 0) {
      if (!everConnected) abortUnreachable(err, "connect");
      finish(c, kConnect, err, "connect");
      return false;
    }
    everConnected = true;
    setTimer(c, 0);
    c->gateSince = now;
    c->phase = Live::kGate;
    return true;
  };

  auto onTimer = [&](Live* c, uint64_t now) {
    c->timerAt = 0;
    switch (c->phase) {
      case Live::kConnecting:
        if (!everConnected) abortUnreachable(ETIMEDOUT, "connect");
        finish(c, kConnect, ETIMEDOUT, "connect");
        return;
      case Live::kSending:
        if (!c->writable && now >= c->lastSendProgress + cfg.stallTimeoutMs * kMs) {
          finish(c, kStalled, ETIMEDOUT, "sendfile");
          return;
        }
        break;
      case Live::kClosing:
        // The target kept its side open after our FIN and the answer: the conversation is over anyway.
        finish(c, -1, 0, nullptr);
        return;
      default:
        break;
    }
    advance(c, now);
  };

  auto resetAll = [&]() {
    std::vector<Live*> all(active.begin(), active.end());
    for (Live* c : all) {
      CloseWithReset(c->sock);
      CloseFd(c->c2s);
      CloseFd(c->s2c);
      setTimer(c, 0);
      active.erase(c);
      delete c;
    }
    k.active.store(0, std::memory_order_relaxed);
    ready.clear();
  };

  epoll_event events[128];
  for (;;) {
    uint64_t now = NowNs();
    if (cancel_.load()) {
      result_.cancelled = true;
      resetAll();
      break;
    }
    if (result_.aborted) {
      resetAll();
      break;
    }
    // Start what is due and no longer waits for a connection that ended before it opened, up to the
    // concurrency. A connection held back is started from here again once one has finished (its finish
    // is an epoll event or a timer, both of which come back to this loop).
    uint64_t nextStart = 0;
    while (next < order.size() && active.size() < cfg.concurrency) {
      uint64_t due = loopStart + scaled(conns_[order[next]].startNs);
      if (due > now) {
        nextStart = due;
        break;
      }
      if (!predecessorsDone(order[next])) break;
      start(order[next++], now);
      if (result_.aborted) break;
    }
    if (result_.aborted) continue;
    if (next >= order.size() && active.empty()) {
      if (loop + 1 >= cfg.loops) break;
      loop++;
      k.loop.store(loop, std::memory_order_relaxed);
      std::fill(finished.begin(), finished.end(), 0);
      completed = 0;
      next = 0;
      loopStart = now;
      continue;
    }
    // Connections that used up their burst go on.
    size_t rounds = ready.size();
    for (size_t i = 0; i < rounds && !ready.empty(); i++) {
      Live* c = ready.front();
      ready.pop_front();
      c->queued = false;
      advance(c, NowNs());
    }
    uint64_t wakeAt = nextStart;
    if (!timers.empty() && (!wakeAt || timers.begin()->first < wakeAt)) wakeAt = timers.begin()->first;
    timespec ts{0, 0};
    const timespec* tsp = nullptr;
    if (!ready.empty()) {
      tsp = &ts;
    } else if (wakeAt) {
      now = NowNs();
      uint64_t wait = wakeAt > now ? wakeAt - now : 0;
      ts.tv_sec = time_t(wait / 1000000000ull);
      ts.tv_nsec = long(wait % 1000000000ull);
      tsp = &ts;
    }
    int n = epoll_pwait2(epfd_, events, 128, tsp, nullptr);
    if (n < 0 && errno != EINTR) break;
    now = NowNs();
    for (int i = 0; i < n; i++) {
      Live* c = static_cast<Live*>(events[i].data.ptr);
      if (!c) {
        uint64_t v;
        ssize_t r = read(wakeFd_, &v, sizeof v);
        (void)r;
        continue;
      }
      if (!active.count(c)) continue;  // ended earlier in this batch
      uint32_t ev = events[i].events;
      c->readable |= bool(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR));
      c->writable |= bool(ev & (EPOLLOUT | EPOLLHUP | EPOLLERR));
      if (c->phase == Live::kConnecting) {
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) continue;
        if (!onConnected(c, now)) continue;
      }
      if (!receive(c, now)) continue;
      advance(c, now);
    }
    // Timers due.
    now = NowNs();
    while (!timers.empty() && timers.begin()->first <= now) {
      Live* c = timers.begin()->second;
      timers.erase(timers.begin());
      onTimer(c, now);
    }
  }
  result_.stats = Snapshot();
  result_.ns = NowNs() - begin;
}

}  // namespace replay
}  // namespace kstreams
