// The stream engine (see engine.h). Design choices worth knowing when changing this file:
//  - A connection is owned by exactly one worker thread, so its pipes are never contended: the tee() into
//    a mirror pipe and the splice() out of it never wait on each other's pipe lock.
//  - Every fd is non-blocking and registered edge-triggered; readiness is kept in flags that are cleared
//    only on EAGAIN, and Pump() loops until nothing moves, so no epoll_ctl is needed per chunk.
//  - tee() copies from the head of a pipe, so the primary pipe P is refilled only when empty: every byte
//    in P has then been tee()d exactly once, and a mirror gets an exact prefix of the primary stream.
//  - A mirror whose pipe cannot take a whole batch is cut (closed with RST, counted): the primary never
//    waits for a mirror.
#include "engine.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <stdlib.h>

#include <algorithm>
#include <condition_variable>
#include <set>

namespace kstreams {
namespace engine {

namespace {

// After the primary connection ends, how long a mirror may take to drain what it still holds.
constexpr uint64_t kMirrorDrainMs = 10000;
// Accepts per listener wake-up, so one busy listener does not starve established connections.
constexpr int kAcceptBatch = 64;
// Out of file descriptors, a worker stops polling the (level-triggered) listener this long instead of
// spinning on accept4() failing: pending connections wait in the backlog until fds free up (nginx
// disables accept events the same way, for 500 ms).
constexpr uint64_t kAcceptPauseMs = 100;

// fds a worker holds in reserve and releases just after an accept, so that an accepted connection always
// has the fds for its setup (2 pipes and the upstream socket: 5, plus a mirror's pipe and socket: 3).
// Without it, at the edge of RLIMIT_NOFILE accept4() succeeds, pipe2() fails, and every queued client
// would be accepted only to be reset. The classic "reserve fd" trick, sized for a whole setup.
constexpr size_t kReserveFds = 8;

// Errors that mean "no fd or memory for a new connection now", not "this connection is bad".
bool IsResourceShortage(int err) { return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM; }
// A mirrored connection's P is this fraction of a mirror pipe. A pipe's capacity is counted in slots
// (one per page or skb fragment), not bytes, and tee() copies slots: a mirror pipe then absorbs several
// whole batches of jitter before a target that keeps up on average is cut.
constexpr uint32_t kMirrorBatchDivisor = 4;
// A mirror socket's send buffer, in pipe sizes (the kernel doubles it for its bookkeeping), and at least
// kMirrorSendBufferMin: the slack must not shrink with the pipe, whose size is set by the per-uid pipe
// budget rather than by how long a mirror target may stall.
constexpr uint64_t kMirrorSendBufferPipes = 4;
constexpr uint64_t kMirrorSendBufferMin = 4u << 20;

uint64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

void CloseFd(int& fd) {
  if (fd >= 0) {
    close(fd);
    fd = -1;
  }
}

// Close so that the peer sees a reset, not an orderly end of stream.
void CloseWithReset(int& fd) {
  if (fd < 0) return;
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  CloseFd(fd);
}

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool IsV4Mapped(const SockAddr& a) {
  if (a.family() != AF_INET6) return false;
  auto* s6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
  return IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr);
}

// v4-mapped IPv6 -> IPv4, so upstream sockets are IPv4 and can bind the IPv4 upstream source.
SockAddr Unmap(const SockAddr& a) {
  if (!IsV4Mapped(a)) return a;
  auto* s6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
  SockAddr out;
  auto* s4 = reinterpret_cast<sockaddr_in*>(&out.storage);
  s4->sin_family = AF_INET;
  s4->sin_port = s6->sin6_port;
  memcpy(&s4->sin_addr, &s6->sin6_addr.s6_addr[12], 4);
  out.len = sizeof(sockaddr_in);
  return out;
}

// Asks for `want` bytes of pipe; returns the pipe's effective size, which is smaller when the kernel
// refused (EPERM: without CAP_SYS_RESOURCE, once the uid's pipes exceed fs.pipe-user-pages-soft - a
// budget shared by every process of that uid on the node - no pipe may grow, and new pipes get 2 slots).
// A refusal is not an error for the connection: the pipe keeps the kernel's size.
uint32_t ResizePipe(int fd, uint32_t want) {
  int r = fcntl(fd, F_SETPIPE_SZ, int(want));
  if (r >= 0) return uint32_t(r);
  r = fcntl(fd, F_GETPIPE_SZ);
  return r > 0 ? uint32_t(r) : 0;
}

void ClosePipe(int fds[2]) {
  CloseFd(fds[0]);
  CloseFd(fds[1]);
}

// The size F_SETPIPE_SZ gives for `size`: a power of two pages (fs/pipe.c round_pipe_size).
uint64_t RoundPipeSize(uint64_t size) {
  uint64_t page = uint64_t(sysconf(_SC_PAGESIZE));
  uint64_t r = page;
  while (r < size) r <<= 1;
  return r;
}

// /proc/sys/fs/pipe-max-size, or 0 when it cannot be read.
uint64_t PipeMaxSize() {
  int fd = open("/proc/sys/fs/pipe-max-size", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[32] = "";
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? strtoull(buf, nullptr, 10) : 0;
}

}  // namespace

bool ParseAddress(const std::string& host, uint16_t port, SockAddr* out) {
  *out = SockAddr{};
  auto* s4 = reinterpret_cast<sockaddr_in*>(&out->storage);
  if (inet_pton(AF_INET, host.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    out->len = sizeof(sockaddr_in);
    return true;
  }
  auto* s6 = reinterpret_cast<sockaddr_in6*>(&out->storage);
  if (inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    out->len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

std::string FormatHost(const SockAddr& addr) {
  SockAddr a = Unmap(addr);
  char buf[INET6_ADDRSTRLEN] = "";
  if (a.family() == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_addr, buf, sizeof buf);
  else if (a.family() == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_addr, buf, sizeof buf);
  return buf;
}

uint16_t Port(const SockAddr& addr) {
  if (addr.family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&addr.storage)->sin_port);
  if (addr.family() == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr.storage)->sin6_port);
  return 0;
}

uint32_t SamplingBucket(const SockAddr& src, const SockAddr& dst) {
  // FNV-1a over the canonical bytes (address, address, port, port in network order), then a splitmix64
  // finalizer: FNV alone leaves sequential ports clustered in the low digits.
  uint64_t h = 0xcbf29ce484222325ULL ^ 0x6b73747265616d73ULL;  // seeded with "kstreams"
  auto mix = [&h](const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; i++) {
      h ^= p[i];
      h *= 0x100000001b3ULL;
    }
  };
  auto addAddr = [&mix](const SockAddr& raw) {
    SockAddr a = Unmap(raw);
    if (a.family() == AF_INET) {
      auto* s4 = reinterpret_cast<const sockaddr_in*>(&a.storage);
      mix(reinterpret_cast<const uint8_t*>(&s4->sin_addr), 4);
    } else if (a.family() == AF_INET6) {
      auto* s6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
      mix(s6->sin6_addr.s6_addr, 16);
    }
  };
  addAddr(src);
  addAddr(dst);
  uint8_t ports[4] = {uint8_t(Port(src) >> 8), uint8_t(Port(src)), uint8_t(Port(dst) >> 8), uint8_t(Port(dst))};
  mix(ports, 4);
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return uint32_t(h % 10000);
}

// ---------------------------------------------------------------------------------------------------
// Connections

namespace {

enum Role : int { kClient = 0, kApp = 1, kMirror = 2, kListener = -1, kWake = -2 };

struct Conn;

// What an epoll event points at.
struct Handle {
  Conn* conn;
  int role;  // Role, or kMirror + index
};

struct MirrorConn {
  enum State { kConnecting, kOpen, kClosed };
  std::shared_ptr<TargetCounters> target;
  State state = kConnecting;
  int sock = -1;
  int pipe[2] = {-1, -1};  // private pipe M: tee() target, drained into sock
  size_t bytes = 0;        // bytes in M
  bool readable = false, writable = false;
  bool shutSent = false;
  bool dropping = false;   // cut or failed: later primary bytes count as dropped
  bool peerEof = false;
  uint64_t deadline = 0;   // connect timeout, or drain limit once the primary is gone
  Handle handle{};
  Conn* conn = nullptr;
};

struct Conn {
  int client = -1, app = -1;
  int p[2] = {-1, -1};  // client -> app
  int r[2] = {-1, -1};  // app -> client
  size_t pBytes = 0, rBytes = 0;
  uint32_t pCapacity = 0;  // P's effective size: the largest batch a mirror pipe must take
  // Slots (pages) of P and R. Every slot holds at least one byte, so a splice into an empty pipe that
  // returns fewer bytes than it has slots cannot have filled it: the socket's receive queue was drained.
  size_t pSlots = 0, rSlots = 0;
  // Sticky: the socket reported EPOLLRDHUP/EPOLLHUP/EPOLLERR/EPOLLPRI (FIN, reset, error, urgent data).
  // From then on reads probe until EAGAIN or EOF instead of trusting a short splice, so the end of the
  // stream is always seen although its edge was already consumed.
  bool clientHup = false, appHup = false;
  bool appConnected = false;
  bool clientReadable = true, clientWritable = true, appReadable = false, appWritable = false;
  bool clientEof = false, appEof = false;
  bool appShut = false, clientShut = false;
  bool primaryDone = false;  // both primary sockets closed (mirrors may still be draining)
  bool freed = false;
  int liveMirrors = 0;  // mirrors not (yet) closed
  std::vector<std::unique_ptr<MirrorConn>> mirrors;
  Handle clientHandle{}, appHandle{};
};

}  // namespace

class Worker {
 public:
  Worker(Engine* engine, int index) : engine_(engine), index_(index) {}
  ~Worker() { Join(); }

  // Starts the thread; it enters the namespace and (worker 0) creates the listener. Blocks until that
  // is done; false with *error set when it failed.
  bool Start(int* listener, SockAddr* listenAddress, StartError* error);
  void Wake() {
    uint64_t one = 1;
    if (wakeFd_ >= 0) (void)!write(wakeFd_, &one, sizeof one);
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  bool Setup(int* listener, SockAddr* listenAddress, StartError* error);
  void Run();
  void Accept();
  void OpenConnection(int fd, const SockAddr& peer, const SockAddr& local);
  void OpenMirror(Conn* c, const ActiveTarget& t, size_t index);
  void Pump(Conn* c);
  bool PumpPrimary(Conn* c);
  bool PumpMirror(Conn* c, MirrorConn* m);
  void TeeToMirrors(Conn* c, size_t n);
  void MirrorConnected(Conn* c, MirrorConn* m);
  void CutMirror(MirrorConn* m, size_t alsoLost);
  void FailMirror(MirrorConn* m);
  void FinishMirror(MirrorConn* m);
  void MarkClosed(MirrorConn* m);
  void AbortPrimary(Conn* c);
  void ClosePrimary(Conn* c);
  void MaybeFree(Conn* c);
  void SetDeadline(MirrorConn* m, uint64_t at);
  void ExpireTimers();
  int NextTimeoutMs();
  void CloseAll();
  bool AddFd(int fd, Handle* h, uint32_t events);
  void PauseListener();
  void MaybeResumeListener();
  bool FillReserve();
  void ReleaseReserve();

  Engine* engine_;
  int index_;
  std::thread thread_;
  int epfd_ = -1, wakeFd_ = -1;
  int listener_ = -1;
  uint32_t pipeSize_ = 0;
  bool stopping_ = false;
  bool listenerPaused_ = false;
  std::vector<int> reserve_;  // see kReserveFds
  uint64_t listenerResumeAt_ = 0;
  Handle listenerHandle_{nullptr, kListener}, wakeHandle_{nullptr, kWake};
  std::set<Conn*> conns_;
  std::vector<Conn*> graveyard_;  // freed after the current epoll batch, whose events may point at them
  std::set<std::pair<uint64_t, MirrorConn*>> timers_;
  std::map<MirrorConn*, Conn*> timerOwner_;

  // Start handshake with the thread that created us.
  std::mutex mu_;
  std::condition_variable cv_;
  bool ready_ = false;
  bool ok_ = false;
};

bool Worker::Start(int* listener, SockAddr* listenAddress, StartError* error) {
  thread_ = std::thread([this, listener, listenAddress, error] {
    bool ok = Setup(listener, listenAddress, error);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_ = true;
      ok_ = ok;
    }
    cv_.notify_all();
    if (ok) Run();
    CloseAll();
  });
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return ready_; });
  if (!ok_) Join();
  return ok_;
}

bool Worker::Setup(int* listener, SockAddr* listenAddress, StartError* error) {
  const Config& cfg = engine_->config();
  auto fail = [error](const char* syscall, const std::string& what) {
    error->err = errno;
    error->syscall = syscall;
    error->what = what;
    return false;
  };
  if (!cfg.netnsPath.empty()) {
    // setns() on this thread only: the process (and Node's threads) stay in their namespace.
    int nsfd = open(cfg.netnsPath.c_str(), O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) return fail("open", "network namespace " + cfg.netnsPath);
    if (setns(nsfd, CLONE_NEWNET) != 0) {
      int e = errno;
      close(nsfd);
      errno = e;
      return fail("setns", "network namespace " + cfg.netnsPath);
    }
    close(nsfd);
  }
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return fail("epoll_create1", "engine worker");
  wakeFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wakeFd_ < 0) return fail("eventfd", "engine worker");
  if (!AddFd(wakeFd_, &wakeHandle_, EPOLLIN)) return fail("epoll_ctl", "engine wake-up eventfd");
  pipeSize_ = engine_->pipeSize();

  if (index_ == 0) {
    SockAddr addr = cfg.listen;
    if (addr.family() == 0) ParseAddress("::", 0, &addr);
    int fd = socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return fail("socket", "listener");
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (addr.family() == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    std::string where = "listener on [" + FormatHost(addr) + "]:" + std::to_string(Port(addr));
    if (bind(fd, addr.sa(), addr.len) != 0) {
      int e = errno;
      close(fd);
      errno = e;
      return fail("bind", where);
    }
    if (listen(fd, 4096) != 0) {
      int e = errno;
      close(fd);
      errno = e;
      return fail("listen", where);
    }
    SockAddr bound;
    bound.len = sizeof bound.storage;
    getsockname(fd, reinterpret_cast<sockaddr*>(&bound.storage), &bound.len);
    *listenAddress = bound;
    *listener = fd;
  }
  listener_ = *listener;
  // Every worker waits on the listener; EPOLLEXCLUSIVE wakes one of them per connection.
  if (!AddFd(listener_, &listenerHandle_, EPOLLIN | EPOLLEXCLUSIVE)) return fail("epoll_ctl", "listener");
  return true;
}

bool Worker::AddFd(int fd, Handle* h, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  return epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0;
}

void Worker::Run() {
  epoll_event events[256];
  while (!stopping_) {
    int n = epoll_wait(epfd_, events, 256, NextTimeoutMs());
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < n && !stopping_; i++) {
      auto* h = static_cast<Handle*>(events[i].data.ptr);
      uint32_t ev = events[i].events;
      if (h->role == kWake) {
        stopping_ = true;
        break;
      }
      if (h->role == kListener) {
        if (!listenerPaused_) Accept();
        continue;
      }
      Conn* c = h->conn;
      if (c->freed) continue;
      bool in = ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI);
      bool hup = ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI);
      bool out = ev & (EPOLLOUT | EPOLLHUP | EPOLLERR);
      if (h->role == kClient) {
        c->clientReadable |= in;
        c->clientWritable |= out;
        c->clientHup |= hup;
      } else if (h->role == kApp) {
        if (!c->appConnected && out) {
          int err = 0;
          socklen_t len = sizeof err;
          getsockopt(c->app, SOL_SOCKET, SO_ERROR, &err, &len);
          if (err != 0) {
            engine_->counters.upstreamConnectFailures.fetch_add(1, std::memory_order_relaxed);
            AbortPrimary(c);
            MaybeFree(c);
            continue;
          }
          c->appConnected = true;
        }
        c->appReadable |= in;
        c->appWritable |= out;
        c->appHup |= hup;
      } else {
        MirrorConn* m = c->mirrors[size_t(h->role - kMirror)].get();
        if (m->state == MirrorConn::kConnecting && out) {
          int err = 0;
          socklen_t len = sizeof err;
          getsockopt(m->sock, SOL_SOCKET, SO_ERROR, &err, &len);
          if (err != 0) {
            FailMirror(m);
            MaybeFree(c);
            continue;
          }
          MirrorConnected(c, m);
        }
        m->readable |= in;
        m->writable |= out;
      }
      Pump(c);
    }
    ExpireTimers();
    MaybeResumeListener();
    for (Conn* c : graveyard_) delete c;
    graveyard_.clear();
  }
}

void Worker::Accept() {
  for (int i = 0; i < kAcceptBatch; i++) {
    // Accept only what can be set up: when the reserve cannot be refilled, the process is at its fd
    // limit, and a connection left in the backlog is better than one accepted and reset.
    if (!FillReserve()) {
      PauseListener();
      return;
    }
    SockAddr peer, local;
    peer.len = sizeof peer.storage;
    int fd = accept4(listener_, reinterpret_cast<sockaddr*>(&peer.storage), &peer.len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (IsResourceShortage(errno)) PauseListener();
      return;  // EAGAIN: the backlog is empty (or another worker took it)
    }
    ReleaseReserve();
    local.len = sizeof local.storage;
    getsockname(fd, reinterpret_cast<sockaddr*>(&local.storage), &local.len);
    engine_->counters.connectionsAccepted.fetch_add(1, std::memory_order_relaxed);
    OpenConnection(fd, peer, local);
  }
}

void Worker::OpenConnection(int fd, const SockAddr& peer, const SockAddr& local) {
  const Config& cfg = engine_->config();
  Conn* c = new Conn;
  conns_.insert(c);
  c->client = fd;
  c->clientHandle = {c, kClient};
  c->appHandle = {c, kApp};
  SetNoDelay(fd);

  SockAddr dst = Unmap(cfg.upstreamOriginalDestination ? local : cfg.upstream);
  std::shared_ptr<const TargetSet> targets = engine_->CurrentTargets();
  std::vector<const ActiveTarget*> sampled;
  if (targets && !targets->empty()) {
    uint32_t bucket = SamplingBucket(peer, local);
    for (const ActiveTarget& t : *targets)
      if (bucket < t.threshold) sampled.push_back(&t);
  }
  uint32_t pSize = sampled.empty() ? pipeSize_ : std::max<uint32_t>(pipeSize_ / kMirrorBatchDivisor, 16 * 4096);
  // Without pipes there is no way to proxy this connection without copying it through user space, so a
  // failing pipe2() (ENFILE, EMFILE, or fs.pipe-user-pages-hard) still resets it. A refused size does not:
  // the primary keeps the kernel's size and is merely slower.
  bool ok = pipe2(c->p, O_NONBLOCK | O_CLOEXEC) == 0 && pipe2(c->r, O_NONBLOCK | O_CLOEXEC) == 0;
  if (ok) {
    c->pCapacity = ResizePipe(c->p[0], pSize);
    uint32_t rCapacity = ResizePipe(c->r[0], pipeSize_);
    size_t page = size_t(sysconf(_SC_PAGESIZE));
    c->pSlots = c->pCapacity / page;
    c->rSlots = rCapacity / page;
    if (c->pCapacity < pSize || rCapacity < pipeSize_)
      engine_->counters.pipeResizeFailures.fetch_add(1, std::memory_order_relaxed);
  }
  if (ok) {
    c->app = socket(dst.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ok = c->app >= 0;
  }
  if (ok) {
    SetNoDelay(c->app);
    // The upstream source lets sk_lookup tell our own connections to the app from the clients'.
    const SockAddr& src = dst.family() == AF_INET ? engine_->upstreamSource4() : engine_->upstreamSource6();
    if (src.family() != 0) {
      int one = 1;
      if (dst.family() == AF_INET) setsockopt(c->app, IPPROTO_IP, IP_FREEBIND, &one, sizeof one);
      else setsockopt(c->app, IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof one);
      ok = bind(c->app, src.sa(), src.len) == 0;
    }
  }
  if (ok) {
    int r = connect(c->app, dst.sa(), dst.len);
    if (r == 0) c->appConnected = c->appWritable = true;
    else ok = errno == EINPROGRESS;
  }
  if (ok) ok = AddFd(c->client, &c->clientHandle, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET) &&
               AddFd(c->app, &c->appHandle, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET);
  if (!ok) {
    int err = errno;
    engine_->counters.upstreamConnectFailures.fetch_add(1, std::memory_order_relaxed);
    AbortPrimary(c);
    MaybeFree(c);
    // Accepted, but no fds for its pipes or upstream: do not take more until some are released.
    if (IsResourceShortage(err)) PauseListener();
    return;
  }

  for (const ActiveTarget* t : sampled) OpenMirror(c, *t, c->mirrors.size());
  Pump(c);
}

void Worker::OpenMirror(Conn* c, const ActiveTarget& t, size_t index) {
  c->mirrors.push_back(std::make_unique<MirrorConn>());
  MirrorConn* m = c->mirrors.back().get();
  m->target = t.counters;
  m->handle = {c, int(kMirror + index)};
  m->conn = c;
  // M must take whole batches of P, with room for jitter: the configured size, or at least
  // kMirrorBatchDivisor batches when P itself is smaller; never less than one batch. When the kernel
  // will not give that (the per-user pipe budget), the mirror is not opened at all: a mirror that would
  // be cut at its first batch is worth nothing, and the primary must not pay for it.
  uint32_t need = std::max(c->pCapacity, std::min(pipeSize_, c->pCapacity * kMirrorBatchDivisor));
  bool piped = pipe2(m->pipe, O_NONBLOCK | O_CLOEXEC) == 0;
  if (piped && ResizePipe(m->pipe[0], pipeSize_) < need && ResizePipe(m->pipe[0], need) < need) {
    ClosePipe(m->pipe);
    piped = false;
  }
  if (!piped) {
    m->target->connectionsSkipped.fetch_add(1, std::memory_order_relaxed);
    m->state = MirrorConn::kClosed;
    m->dropping = true;  // this connection's primary bytes count as dropped for the target
    return;
  }
  m->target->connectionsMirrored.fetch_add(1, std::memory_order_relaxed);
  m->target->connectionsActive.fetch_add(1, std::memory_order_relaxed);
  c->liveMirrors++;
  m->sock = socket(t.address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  bool ok = m->sock >= 0;
  if (ok) {
    // Corked: a mirror needs no low latency, and sending each small batch at once costs a segment and a
    // wake-up of the target per request on the node's CPUs. The kernel sends full segments, a partial one
    // after at most ~200 ms (the cork ceiling), and everything at shutdown(SHUT_WR).
    int one = 1;
    setsockopt(m->sock, IPPROTO_TCP, TCP_CORK, &one, sizeof one);
    // The socket's send buffer is the mirror's slack beyond its pipe: a target that keeps up on average
    // but stalls for a moment (a scheduling hiccup, a GC) must not be cut. Fixed, so memory stays bounded;
    // FORCE passes net.core.wmem_max when we have CAP_NET_ADMIN, else the plain option is capped there.
    int sndbuf = int(std::min<uint64_t>(std::max(uint64_t(pipeSize_) * kMirrorSendBufferPipes, kMirrorSendBufferMin), 1u << 30));
    if (setsockopt(m->sock, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) != 0)
      setsockopt(m->sock, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    int r = connect(m->sock, t.address.sa(), t.address.len);
    ok = r == 0 || errno == EINPROGRESS;
    if (ok) ok = AddFd(m->sock, &m->handle, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
    if (ok && r == 0) MirrorConnected(c, m);
  }
  if (!ok) {
    FailMirror(m);
    return;
  }
  if (m->state == MirrorConn::kConnecting) SetDeadline(m, NowMs() + engine_->config().mirrorConnectTimeoutMs);
  timerOwner_[m] = c;
}

void Worker::MirrorConnected(Conn* c, MirrorConn* m) {
  m->state = MirrorConn::kOpen;
  m->writable = true;
  SetDeadline(m, c->primaryDone ? NowMs() + kMirrorDrainMs : 0);
}

void Worker::SetDeadline(MirrorConn* m, uint64_t at) {
  if (m->deadline) timers_.erase({m->deadline, m});
  m->deadline = at;
  if (at) timers_.insert({at, m});
}

int Worker::NextTimeoutMs() {
  if (timers_.empty() && !listenerPaused_) return -1;
  uint64_t at = timers_.empty() ? listenerResumeAt_ : timers_.begin()->first;
  if (listenerPaused_) at = std::min(at, listenerResumeAt_);
  uint64_t now = NowMs();
  return at <= now ? 0 : int(std::min<uint64_t>(at - now, 60000));
}

bool Worker::FillReserve() {
  while (reserve_.size() < kReserveFds) {
    int fd = fcntl(wakeFd_, F_DUPFD_CLOEXEC, 0);  // any fd will do; a dup costs no memory
    if (fd < 0) return false;
    reserve_.push_back(fd);
  }
  return true;
}

void Worker::ReleaseReserve() {
  for (int fd : reserve_) close(fd);
  reserve_.clear();
}

// EPOLLEXCLUSIVE registrations cannot be modified (EPOLL_CTL_MOD fails with EINVAL): delete and re-add.
void Worker::PauseListener() {
  if (listenerPaused_) return;
  if (epoll_ctl(epfd_, EPOLL_CTL_DEL, listener_, nullptr) != 0) return;
  listenerPaused_ = true;
  listenerResumeAt_ = NowMs() + kAcceptPauseMs;
  engine_->counters.acceptPauses.fetch_add(1, std::memory_order_relaxed);
}

void Worker::MaybeResumeListener() {
  if (!listenerPaused_ || NowMs() < listenerResumeAt_) return;
  // Level-triggered: connections that queued meanwhile wake us at once. If even this fails (ENOMEM),
  // try again after another pause.
  if (AddFd(listener_, &listenerHandle_, EPOLLIN | EPOLLEXCLUSIVE)) listenerPaused_ = false;
  else listenerResumeAt_ = NowMs() + kAcceptPauseMs;
}

void Worker::ExpireTimers() {
  uint64_t now = NowMs();
  while (!timers_.empty() && timers_.begin()->first <= now) {
    MirrorConn* m = timers_.begin()->second;
    Conn* c = timerOwner_[m];
    SetDeadline(m, 0);
    if (m->state == MirrorConn::kConnecting) FailMirror(m);
    else if (m->state == MirrorConn::kOpen) {
      // The primary is gone and the mirror still has not drained: what is left is lost.
      if (m->bytes > 0) CutMirror(m, 0);
      else FinishMirror(m);
    }
    MaybeFree(c);
  }
}

// Moves as much as possible in every direction; returns when nothing moves any more.
void Worker::Pump(Conn* c) {
  bool progress = true;
  while (progress && !c->freed) {
    progress = false;
    // Primary first: a mirror's send (which on loopback runs the target's receive path too) must not
    // delay the bytes the client and the app are waiting for.
    if (!c->primaryDone) progress |= PumpPrimary(c);
    for (auto& m : c->mirrors) progress |= PumpMirror(c, m.get());
  }
  MaybeFree(c);
}

bool Worker::PumpPrimary(Conn* c) {
  bool progress = false;
  Engine::Counters& k = engine_->counters;
  // client -> P, only into an empty P (see the top of this file), then tee to every mirror. P -> app
  // follows at once, before any mirror is written: the primary never waits behind a mirror's send.
  if (c->pBytes == 0 && !c->clientEof && c->clientReadable) {
    ssize_t n = splice(c->client, nullptr, c->p[1], nullptr, pipeSize_, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
      c->pBytes = size_t(n);
      TeeToMirrors(c, size_t(n));
      progress = true;
      // Fewer bytes than P has slots: P had room, so the receive queue is empty and the next splice would
      // only return EAGAIN; new bytes bring a new edge. Not once FIN/RST/urgent data was signalled: that
      // edge is consumed, so we keep reading until EOF or EAGAIN.
      if (size_t(n) < c->pSlots && !c->clientHup) c->clientReadable = false;
    } else if (n == 0) {
      c->clientEof = true;
      progress = true;
    } else if (errno == EAGAIN) {
      c->clientReadable = false;
    } else if (errno != EINTR) {
      AbortPrimary(c);
      return false;
    }
  }
  // P -> app
  if (c->pBytes > 0 && c->appConnected && c->appWritable) {
    ssize_t n = splice(c->p[0], nullptr, c->app, nullptr, c->pBytes, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
      c->pBytes -= size_t(n);
      k.bytesClientToApp.fetch_add(uint64_t(n), std::memory_order_relaxed);
      progress = true;
    } else if (n < 0 && errno == EAGAIN) {
      c->appWritable = false;
    } else if (n < 0 && errno != EINTR) {
      AbortPrimary(c);
      return false;
    }
  }
  if (c->clientEof && c->pBytes == 0 && c->appConnected && !c->appShut) {
    shutdown(c->app, SHUT_WR);
    c->appShut = true;
    progress = true;
  }
  // app -> R -> client, the same way.
  if (c->rBytes == 0 && !c->appEof && c->appConnected && c->appReadable) {
    ssize_t n = splice(c->app, nullptr, c->r[1], nullptr, pipeSize_, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
      c->rBytes = size_t(n);
      progress = true;
      if (size_t(n) < c->rSlots && !c->appHup) c->appReadable = false;
    } else if (n == 0) {
      c->appEof = true;
      progress = true;
    } else if (errno == EAGAIN) {
      c->appReadable = false;
    } else if (errno != EINTR) {
      AbortPrimary(c);
      return false;
    }
  }
  if (c->rBytes > 0 && c->clientWritable) {
    ssize_t n = splice(c->r[0], nullptr, c->client, nullptr, c->rBytes, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
      c->rBytes -= size_t(n);
      k.bytesAppToClient.fetch_add(uint64_t(n), std::memory_order_relaxed);
      progress = true;
    } else if (n < 0 && errno == EAGAIN) {
      c->clientWritable = false;
    } else if (n < 0 && errno != EINTR) {
      AbortPrimary(c);
      return false;
    }
  }
  if (c->appEof && c->rBytes == 0 && !c->clientShut) {
    shutdown(c->client, SHUT_WR);
    c->clientShut = true;
    progress = true;
  }
  if (c->appShut && c->clientShut) {
    ClosePrimary(c);
    progress = true;  // mirrors may now be able to finish
  }
  return progress;
}

void Worker::TeeToMirrors(Conn* c, size_t n) {
  for (auto& mp : c->mirrors) {
    MirrorConn* m = mp.get();
    if (m->state == MirrorConn::kClosed) {
      if (m->dropping) m->target->bytesDropped.fetch_add(n, std::memory_order_relaxed);
      continue;
    }
    ssize_t t = tee(c->p[0], m->pipe[1], n, SPLICE_F_NONBLOCK);
    if (t == ssize_t(n)) {
      m->bytes += n;
    } else {
      // A partial copy would leave a gap in the mirror's stream: cut it instead.
      CutMirror(m, n);
    }
  }
}

bool Worker::PumpMirror(Conn* c, MirrorConn* m) {
  if (m->state != MirrorConn::kOpen) return false;
  bool progress = false;
  if (m->bytes > 0 && m->writable) {
    ssize_t n = splice(m->pipe[0], nullptr, m->sock, nullptr, m->bytes, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
      m->bytes -= size_t(n);
      m->target->bytesMirrored.fetch_add(uint64_t(n), std::memory_order_relaxed);
      progress = true;
    } else if (n < 0 && errno == EAGAIN) {
      m->writable = false;
    } else if (n < 0 && errno != EINTR) {
      CutMirror(m, 0);
      return true;
    }
  }
  // The target's answers are not wanted: MSG_TRUNC makes TCP discard them without copying.
  while (m->readable && !m->peerEof) {
    ssize_t n = recv(m->sock, nullptr, 1 << 20, MSG_TRUNC | MSG_DONTWAIT);
    if (n > 0) continue;
    if (n == 0) m->peerEof = true;
    else if (errno == EAGAIN) m->readable = false;
    else if (errno != EINTR) {
      if (m->bytes > 0 || !m->shutSent) CutMirror(m, 0);
      else FinishMirror(m);
      return true;
    }
  }
  if (c->clientEof && c->pBytes == 0 && m->bytes == 0 && !m->shutSent) {
    shutdown(m->sock, SHUT_WR);
    m->shutSent = true;
    progress = true;
  }
  // Done when everything was sent and both sides ended, or the primary is gone and the target said EOF.
  if (m->shutSent && (m->peerEof && c->primaryDone)) {
    FinishMirror(m);
    progress = true;
  }
  return progress;
}

void Worker::MarkClosed(MirrorConn* m) {
  m->target->connectionsActive.fetch_sub(1, std::memory_order_relaxed);
  m->conn->liveMirrors--;
  m->bytes = 0;
  m->state = MirrorConn::kClosed;
  SetDeadline(m, 0);
}

void Worker::CutMirror(MirrorConn* m, size_t alsoLost) {
  if (m->state == MirrorConn::kClosed) return;
  m->target->connectionsCut.fetch_add(1, std::memory_order_relaxed);
  m->target->bytesDropped.fetch_add(m->bytes + alsoLost, std::memory_order_relaxed);
  m->dropping = true;
  MarkClosed(m);
  CloseWithReset(m->sock);
  CloseFd(m->pipe[0]);
  CloseFd(m->pipe[1]);
}

void Worker::FailMirror(MirrorConn* m) {
  if (m->state == MirrorConn::kClosed) return;
  m->target->connectFailures.fetch_add(1, std::memory_order_relaxed);
  m->target->bytesDropped.fetch_add(m->bytes, std::memory_order_relaxed);
  m->dropping = true;
  MarkClosed(m);
  CloseFd(m->sock);
  CloseFd(m->pipe[0]);
  CloseFd(m->pipe[1]);
}

// Everything the mirror had was delivered: orderly close.
void Worker::FinishMirror(MirrorConn* m) {
  if (m->state == MirrorConn::kClosed) return;
  MarkClosed(m);
  CloseFd(m->sock);
  CloseFd(m->pipe[0]);
  CloseFd(m->pipe[1]);
}

// A reset, an error or a failed upstream connect: both primary sockets close with RST, and so do the
// mirrors, so that neither the app nor a target takes a truncated stream for a complete one.
void Worker::AbortPrimary(Conn* c) {
  if (c->primaryDone) return;
  CloseWithReset(c->client);
  CloseWithReset(c->app);
  for (auto& m : c->mirrors) {
    if (m->state == MirrorConn::kClosed) continue;
    m->target->bytesDropped.fetch_add(m->bytes, std::memory_order_relaxed);
    MarkClosed(m.get());
    CloseWithReset(m->sock);
  }
  ClosePrimary(c);
}

void Worker::ClosePrimary(Conn* c) {
  if (!c->primaryDone) {
    CloseFd(c->client);
    CloseFd(c->app);
    CloseFd(c->p[0]);
    CloseFd(c->p[1]);
    CloseFd(c->r[0]);
    CloseFd(c->r[1]);
    c->primaryDone = true;
    engine_->counters.connectionsClosed.fetch_add(1, std::memory_order_relaxed);
    uint64_t at = NowMs() + kMirrorDrainMs;
    for (auto& m : c->mirrors)
      if (m->state == MirrorConn::kOpen) SetDeadline(m.get(), at);
  }
}

void Worker::MaybeFree(Conn* c) {
  if (c->freed || !c->primaryDone) return;
  for (auto& m : c->mirrors) {
    if (m->state != MirrorConn::kClosed) return;
    CloseFd(m->pipe[0]);
    CloseFd(m->pipe[1]);
  }
  for (auto& m : c->mirrors) timerOwner_.erase(m.get());
  c->freed = true;
  conns_.erase(c);
  graveyard_.push_back(c);
}

void Worker::CloseAll() {
  for (Conn* c : conns_) {
    for (auto& m : c->mirrors) {
      if (m->state != MirrorConn::kClosed) MarkClosed(m.get());
      CloseFd(m->sock);
      CloseFd(m->pipe[0]);
      CloseFd(m->pipe[1]);
    }
    ClosePrimary(c);
    delete c;
  }
  conns_.clear();
  for (Conn* c : graveyard_) delete c;
  graveyard_.clear();
  timers_.clear();
  timerOwner_.clear();
  ReleaseReserve();
  CloseFd(epfd_);
  CloseFd(wakeFd_);
}

// ---------------------------------------------------------------------------------------------------
// Engine

Engine::Engine(const Config& config) : config_(config) {}

Engine::~Engine() { Stop(); }

std::unique_ptr<Engine> Engine::Start(const Config& config, StartError* error) {
  std::unique_ptr<Engine> e(new Engine(config));
  if (e->config_.threads == 0) e->config_.threads = 1;
  for (const std::string& src : e->config_.upstreamSources) {
    SockAddr a;
    if (!ParseAddress(src, 0, &a)) {
      *error = {EINVAL, "inet_pton", "upstream source " + src + " (expected a numeric IPv4 or IPv6 address)"};
      return nullptr;
    }
    SockAddr& slot = a.family() == AF_INET ? e->source4_ : e->source6_;
    if (slot.family() != 0) {
      *error = {EINVAL, "bind", "upstream source " + src + " (at most one upstream source per address family)"};
      return nullptr;
    }
    slot = a;
  }
  // Size a pipe once here, so a size the kernel always refuses (above fs.pipe-max-size without
  // CAP_SYS_RESOURCE) fails start() instead of shrinking every connection. A refusal within that maximum
  // is the per-user pipe budget, used up for now (maybe by other sidecars of the node): not a reason
  // to refuse to start, since connections degrade one by one (pipeResizeFailures, connectionsSkipped).
  int probe[2];
  if (pipe2(probe, O_CLOEXEC) != 0) {
    *error = {errno, "pipe2", "probe pipe"};
    return nullptr;
  }
  int size = fcntl(probe[0], F_SETPIPE_SZ, int(config.pipeSize));
  int err = errno;
  close(probe[0]);
  close(probe[1]);
  if (size < 0) {
    uint64_t rounded = RoundPipeSize(config.pipeSize), max = PipeMaxSize();
    if (err != EPERM || max == 0 || rounded > max || rounded > (1u << 31)) {
      *error = {err, "fcntl", "F_SETPIPE_SZ " + std::to_string(config.pipeSize) +
                                  " (above /proc/sys/fs/pipe-max-size needs CAP_SYS_RESOURCE; choose a smaller pipeSize)"};
      return nullptr;
    }
    size = int(rounded);
  }
  e->pipeSize_ = uint32_t(size);
  e->UpdateMirrors(config.mirrors);

  for (uint32_t i = 0; i < e->config_.threads; i++) {
    e->workers_.push_back(std::make_unique<Worker>(e.get(), int(i)));
    if (!e->workers_.back()->Start(&e->listener_, &e->listenAddress_, error)) {
      e->workers_.pop_back();
      e->Stop();
      return nullptr;
    }
  }
  return e;
}

void Engine::Stop() {
  std::lock_guard<std::mutex> lock(stopMu_);
  if (stopped_) return;
  stopped_ = true;
  for (auto& w : workers_) w->Wake();
  for (auto& w : workers_) w->Join();
  workers_.clear();
  if (listener_ >= 0) {
    close(listener_);
    listener_ = -1;
  }
}

std::shared_ptr<TargetCounters> Engine::CountersFor(const std::string& name) {
  auto it = allCounters_.find(name);
  if (it != allCounters_.end()) return it->second;
  auto c = std::make_shared<TargetCounters>();
  c->name = name;
  allCounters_[name] = c;
  order_.push_back(name);
  return c;
}

void Engine::UpdateMirrors(const std::vector<MirrorTarget>& mirrors) {
  auto set = std::make_shared<TargetSet>();
  std::lock_guard<std::mutex> lock(targetsMu_);
  for (const MirrorTarget& m : mirrors) {
    double pct = std::max(0.0, std::min(100.0, m.samplingPercent));
    set->push_back({m.address, uint32_t(pct * 100 + 0.5), CountersFor(m.name)});
  }
  targets_ = set;
}

std::shared_ptr<const TargetSet> Engine::CurrentTargets() const {
  std::lock_guard<std::mutex> lock(targetsMu_);
  return targets_;
}

Stats Engine::Snapshot() const {
  Stats s;
  auto r = std::memory_order_relaxed;
  s.connectionsAccepted = counters.connectionsAccepted.load(r);
  s.connectionsClosed = counters.connectionsClosed.load(r);
  s.connectionsActive = int64_t(s.connectionsAccepted) - int64_t(s.connectionsClosed);
  s.upstreamConnectFailures = counters.upstreamConnectFailures.load(r);
  s.acceptPauses = counters.acceptPauses.load(r);
  s.pipeResizeFailures = counters.pipeResizeFailures.load(r);
  s.bytesClientToApp = counters.bytesClientToApp.load(r);
  s.bytesAppToClient = counters.bytesAppToClient.load(r);
  std::lock_guard<std::mutex> lock(targetsMu_);
  // Current targets, and removed ones while they still have connections open.
  std::set<std::string> current;
  if (targets_)
    for (const ActiveTarget& t : *targets_) current.insert(t.counters->name);
  for (const std::string& name : order_) {
    const TargetCounters& t = *allCounters_.at(name);
    int64_t active = t.connectionsActive.load(r);
    if (!current.count(name) && active == 0) continue;
    s.targets.push_back({name, t.connectionsMirrored.load(r), t.connectionsCut.load(r), t.connectFailures.load(r),
                         t.connectionsSkipped.load(r), active,
                         t.bytesMirrored.load(r), t.bytesDropped.load(r)});
  }
  return s;
}

}  // namespace engine
}  // namespace kstreams
