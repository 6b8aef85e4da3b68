// The worker's loop. Design choices worth knowing when changing this file:
//  - Every fd is non-blocking and registered edge-triggered once; readiness is kept in flags that are
//    cleared only on EAGAIN, and Pump() loops until nothing moves, so no epoll_ctl is needed per chunk.
//  - One connection gets kPumpRounds rounds at a time; if it still has bytes to move it goes on the ready
//    list and the loop polls epoll without waiting, so one busy connection cannot hold the worker.
//  - Drain: accept what is already queued on the listener, stop polling it, keep serving connections
//    until none is left or the deadline passes, then reset what remains. Reset: at once.
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>

#include "file_leg.h"
#include "mirror_leg.h"
#include "sockets.h"

namespace kstreams {
namespace engine {

Worker::~Worker() {
  Join();
  CloseFd(wakeFd_);
}

void Worker::Wake() {
  uint64_t one = 1;
  if (wakeFd_ >= 0) (void)!write(wakeFd_, &one, sizeof one);
}

void Worker::Join() {
  if (thread_.joinable()) thread_.join();
}

bool Worker::Start(int* listener, SockAddr* listenAddress, StartError* error) {
  // Created here, before the thread, so that Wake() is valid for the Worker's whole life.
  wakeFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wakeFd_ < 0) {
    *error = {errno, "eventfd", "engine worker"};
    return false;
  }
  thread_ = std::thread([this, listener, listenAddress, error] {
    bool ok = Setup(listener, listenAddress, error);
    {
      std::lock_guard<std::mutex> lock(mu_);
      started_ = true;
      ok_ = ok;
    }
    cv_.notify_all();
    if (ok) Run();
    for (Conn* c : graveyard_) delete c;
    graveyard_.clear();
    gate_.Release();
    CloseFd(epfd_);
    PublishGauges();
  });
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return started_; });
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
    const char* syscall = "";
    if (!EnterNetns(cfg.netnsPath, &syscall)) return fail(syscall, "network namespace " + cfg.netnsPath);
  }
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return fail("epoll_create1", "engine worker");
  if (!Watch(wakeFd_, &wakeHandle_, EPOLLIN)) return fail("epoll_ctl", "engine wake-up eventfd");

  if (index_ == 0) {
    SockAddr addr = cfg.listen;
    if (addr.family() == 0) ParseAddress("::", 0, &addr);
    int fd = socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return fail("socket", "listener");
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (addr.family() == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    std::string where = "listener on [" + FormatHost(addr) + "]:" + std::to_string(Port(addr));
    const char* failed = bind(fd, addr.sa(), addr.len) != 0 ? "bind" : listen(fd, 4096) != 0 ? "listen" : nullptr;
    if (failed) {
      int e = errno;
      close(fd);
      errno = e;
      return fail(failed, where);
    }
    SockAddr bound;
    bound.len = sizeof bound.storage;
    getsockname(fd, reinterpret_cast<sockaddr*>(&bound.storage), &bound.len);
    *listenAddress = bound;
    *listener = fd;
  }
  listener_ = *listener;
  // Every worker waits on the listener; EPOLLEXCLUSIVE wakes one of them per connection.
  if (!Watch(listener_, &listenerHandle_, EPOLLIN | EPOLLEXCLUSIVE)) return fail("epoll_ctl", "listener");
  listenerWatched_ = true;
  return true;
}

bool Worker::Watch(int fd, Handle* h, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  return epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0;
}

void Worker::Run() {
  epoll_event events[256];
  for (;;) {
    Engine::Mode mode = engine_->mode();
    if (mode == Engine::kResetting) {
      ResetAll();
      return;
    }
    if (mode == Engine::kDraining && !draining_) StartDrain();
    if (draining_ && conns_.empty()) return;
    if (draining_ && NowMs() >= engine_->drainDeadline()) {
      ResetAll();
      return;
    }
    int n = epoll_wait(epfd_, events, 256, ready_.empty() ? NextTimeoutMs() : 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      // Nothing can be served without epoll: reset (never a silent FIN) and stop, counted.
      Add(k_.workerFailures);
      ResetAll();
      return;
    }
    for (int i = 0; i < n; i++) Dispatch(static_cast<Handle*>(events[i].data.ptr), events[i].events);
    ExpireTimers();
    RunReady();
    MaybeResumeListener();
    for (Conn* c : graveyard_) delete c;
    graveyard_.clear();
    PublishGauges();
  }
}

void Worker::Dispatch(Handle* h, uint32_t ev) {
  if (h->role == Handle::kWake) {
    uint64_t v;
    (void)!read(wakeFd_, &v, sizeof v);  // the loop reads the engine's mode next
    return;
  }
  if (h->role == Handle::kListener) {
    if (!gate_.paused() && !draining_) Accept(false);
    return;
  }
  Conn* c = h->conn;
  if (c->freed) return;
  bool in = ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI);
  bool hup = ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI);
  bool out = ev & (EPOLLOUT | EPOLLHUP | EPOLLERR);
  if (h->role == Handle::kClient) {
    c->client.readable |= in;
    c->client.writable |= out;
    c->client.hup |= hup;
  } else if (h->role == Handle::kApp) {
    if (!c->appConnected && out) {
      if (ConnectError(c->app.fd) != 0) {
        Add(k_.upstreamConnectFailures);
        AbortPrimary(c);
        MaybeFree(c);
        return;
      }
      c->appConnected = true;
      if (!AttachAppTransform(c)) {
        MaybeFree(c);
        return;
      }
    }
    c->app.readable |= in;
    c->app.writable |= out;
    c->app.hup |= hup;
  } else {
    h->leg->OnEvent(ev);
  }
  Pump(c);
}

void Worker::Accept(bool all) {
  for (int i = 0; all || i < AcceptGate::kBatch; i++) {
    // Accept only what can be set up: when the reserve cannot be refilled, the process is at its fd
    // limit, and a connection left in the backlog is better than one accepted and reset.
    if (!gate_.Fill(wakeFd_)) {
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
    gate_.Release();
    local.len = sizeof local.storage;
    getsockname(fd, reinterpret_cast<sockaddr*>(&local.storage), &local.len);
    Add(k_.connectionsAccepted);
    OpenConnection(fd, peer, local);
  }
}

void Worker::OpenConnection(int fd, const SockAddr& peer, const SockAddr& local) {
  const Config& cfg = engine_->config();
  std::shared_ptr<const ActiveSettings> s = engine_->Current();
  Conn* c = new Conn;
  conns_.insert(c);
  c->client.fd = fd;
  c->client.readable = c->client.writable = true;
  c->clientHandle = {c, Handle::kClient, nullptr};
  c->appHandle = {c, Handle::kApp, nullptr};
  SetNoDelay(fd);
  SetOobInline(fd);

  SockAddr dst = Unmap(cfg.upstreamOriginalDestination ? local : cfg.upstream);
  std::vector<const ActiveTarget*> sampled;
  if (!s->targets.empty()) {
    uint32_t bucket = SamplingBucket(peer, local);
    for (const ActiveTarget& t : s->targets)
      if (bucket < t.threshold) sampled.push_back(&t);
  }
  // A mirrored connection's P is a quarter of a mirror pipe. A pipe's capacity is counted in slots (one
  // per page or skb fragment), not bytes, and tee() copies slots: a mirror pipe then absorbs several
  // whole batches of jitter before a target that keeps up on average is cut.
  c->pWant = sampled.empty() ? s->pipeSize : std::max<uint32_t>(s->pipeSize / 4, 16 * 4096);
  c->rWant = s->pipeSize;
  // A capture of the app's answers tees R's batches the same way: R is then as small as P.
  for (const ActiveTarget* t : sampled)
    if (t->capture && t->capture->spec().responses) c->rWant = c->pWant;

  bool ok = true;
  if (cfg.recorder) {
    // No app: P is emptied into /dev/null (a splice that only drops page references) once every leg
    // took its copy, and the "app" ends when the client does.
    c->app.fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    c->appIsSink = true;
    c->appConnected = c->app.writable = c->app.fd >= 0;
    ok = Watch(c->client.fd, &c->clientHandle, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET) && c->app.fd >= 0;
    if (!ok) {
      Add(k_.setupFailures);
      AbortPrimary(c);
      MaybeFree(c);
      return;
    }
  }
  if (!cfg.recorder) c->app.fd = socket(dst.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  ok = c->app.fd >= 0;
  if (ok && !cfg.recorder) {
    SetNoDelay(c->app.fd);
    SetOobInline(c->app.fd);
    // The upstream source lets sk_lookup tell our own connections to the app from the clients'.
    const SockAddr& src = dst.family() == AF_INET ? engine_->upstreamSource4() : engine_->upstreamSource6();
    if (src.family() != 0) {
      int one = 1;
      if (dst.family() == AF_INET) setsockopt(c->app.fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof one);
      else setsockopt(c->app.fd, IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof one);
      ok = bind(c->app.fd, src.sa(), src.len) == 0;
    }
  }
  bool setup = ok;  // past this point a failure is the app's (refused, unreachable)
  if (ok && !cfg.recorder) {
    int r = connect(c->app.fd, dst.sa(), dst.len);
    if (r == 0) c->appConnected = c->app.writable = true;
    else ok = errno == EINPROGRESS;
    setup = ok || !IsResourceShortage(errno);
  }
  if (ok && !cfg.recorder) {
    ok = Watch(c->client.fd, &c->clientHandle, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET) &&
         Watch(c->app.fd, &c->appHandle, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET);
    setup = ok;
  }
  if (!ok) {
    int err = errno;
    Add(setup ? k_.upstreamConnectFailures : k_.setupFailures);
    AbortPrimary(c);
    MaybeFree(c);
    // Accepted, but no fds for its sockets: do not take more until some are released.
    if (IsResourceShortage(err)) PauseListener();
    return;
  }

  c->xfProfile = s->transform && s->transform->primary ? s->transform : nullptr;
  if (c->appConnected && !AttachAppTransform(c)) {
    MaybeFree(c);
    return;
  }

  MirrorLeg::Options mo;
  // M must take whole batches of P, with room for jitter: the configured size, or at least 4 batches
  // when P itself is smaller; never less than one batch.
  mo.pipeCapacity = std::max(c->pWant, std::min(s->pipeSize, c->pWant * 4));
  mo.turnTimeoutMs = s->turnTimeoutMs;
  mo.bufferSize = s->mirrorBufferSize;
  mo.connectTimeoutMs = cfg.mirrorConnectTimeoutMs;
  if (s->transform && s->transform->mirror) mo.transform = s->transform;
  for (const ActiveTarget* t : sampled) {
    if (t->capture) {
      auto leg = std::make_unique<FileLeg>(this, c, *t, mo.pipeCapacity, mo.bufferSize);
      FileLeg* f = leg.get();
      c->legs.push_back(std::move(leg));
      f->Open(peer, local);
      continue;
    }
    auto leg = std::make_unique<MirrorLeg>(this, c, *t, mo);
    MirrorLeg* m = leg.get();
    c->legs.push_back(std::move(leg));
    m->Open();
  }
  Pump(c);
}

void Worker::Pump(Conn* c) {
  for (int round = 0; round < kPumpRounds; round++) {
    if (c->freed) return;
    bool progress = false;
    // Primary first: a leg's send (which on loopback runs the target's receive path too) must not
    // delay the bytes the client and the app are waiting for.
    if (!c->primaryDone) progress |= PumpPrimary(c);
    for (auto& leg : c->legs) progress |= leg->Pump();
    if (!progress) {
      MaybeFree(c);
      return;
    }
  }
  MaybeFree(c);
  if (!c->freed && !c->ready) {
    c->ready = true;
    ready_.push_back(c);
  }
}

void Worker::RunReady() {
  // Only the connections queued before this pass: one that requeues itself waits for the next.
  size_t n = ready_.size();
  for (size_t i = 0; i < n; i++) {
    Conn* c = ready_.front();
    ready_.pop_front();
    c->ready = false;
    if (!c->freed) Pump(c);
  }
}

void Worker::StartDrain() {
  draining_ = true;
  // The interception is gone, so nothing new is steered here; what the kernel already queued on the
  // listener is accepted and served like the rest, then the listener is left alone (the engine closes
  // it after the workers are done).
  if (listenerWatched_ && !gate_.paused()) Accept(true);
  if (listenerWatched_) epoll_ctl(epfd_, EPOLL_CTL_DEL, listener_, nullptr);
  listenerWatched_ = false;
}

void Worker::ResetAll() {
  resetting_ = true;
  for (Conn* c : conns_) {
    if (!c->primaryDone) {
      Add(k_.connectionsReset);
      AbortPrimary(c);
    }
    for (auto& leg : c->legs) leg->Abort();
    c->freed = true;
    graveyard_.push_back(c);
  }
  conns_.clear();
  ready_.clear();
  timers_.clear();
  timerOf_.clear();
}

void Worker::SetTimerOf(Timed* t, uint64_t at) {
  auto it = timerOf_.find(t);
  if (it != timerOf_.end()) {
    if (it->second == at) return;
    timers_.erase({it->second, t});
    timerOf_.erase(it);
  }
  if (!at) return;
  timers_.insert({at, t});
  timerOf_[t] = at;
}

int Worker::NextTimeoutMs() {
  uint64_t at = timers_.empty() ? 0 : timers_.begin()->first;
  if (gate_.paused() && (!at || gate_.resumeAt() < at)) at = gate_.resumeAt();
  if (draining_ && (!at || engine_->drainDeadline() < at)) at = engine_->drainDeadline();
  if (!at) return -1;
  uint64_t now = NowMs();
  return at <= now ? 0 : int(std::min<uint64_t>(at - now, 60000));
}

void Worker::ExpireTimers() {
  uint64_t now = NowMs();
  while (!timers_.empty() && timers_.begin()->first <= now) {
    Timed* t = timers_.begin()->second;
    timers_.erase(timers_.begin());
    timerOf_.erase(t);
    Conn* c = t->timedConn();
    t->OnTimer(now);
    Pump(c);
  }
}

// EPOLLEXCLUSIVE registrations cannot be modified (EPOLL_CTL_MOD fails with EINVAL): delete and re-add.
void Worker::PauseListener() {
  if (gate_.paused() || !listenerWatched_) return;
  if (epoll_ctl(epfd_, EPOLL_CTL_DEL, listener_, nullptr) != 0) return;
  gate_.Pause(NowMs());
  Add(k_.acceptPauses);
}

void Worker::MaybeResumeListener() {
  if (!gate_.paused() || NowMs() < gate_.resumeAt()) return;
  if (draining_) {
    gate_.Resumed();
    listenerWatched_ = false;
    return;
  }
  // Level-triggered: connections that queued meanwhile wake us at once. If even this fails (ENOMEM),
  // try again after another pause.
  if (Watch(listener_, &listenerHandle_, EPOLLIN | EPOLLEXCLUSIVE)) gate_.Resumed();
  else gate_.Retry(NowMs());
}

void Worker::PublishGauges() {
  auto set = [](Counter& c, uint64_t v) { c.store(v, std::memory_order_relaxed); };
  set(k_.pipesInUse, pool_.inUse());
  set(k_.pipesPooled, pool_.pooled());
  set(k_.pipeBytesInUse, pool_.inUseBytes());
  set(k_.pipeBytesPooled, pool_.pooledBytes());
}

}  // namespace engine
}  // namespace kstreams
