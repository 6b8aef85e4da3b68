// The engine facade: start, live settings, counters, drain and stop. The data path is in worker.cc,
// primary.cc and mirror_leg.cc.
#include "engine.h"

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "flusher.h"
#include "pipes.h"
#include "sockets.h"
#include "worker.h"

namespace kstreams {
namespace engine {

Engine::Engine(const Config& config) : config_(config), flusher_(std::make_shared<CaptureFlusher>()) {}

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
  e->workerCounters_.reset(new WorkerCounters[e->config_.threads]);
  if (!e->Apply(config.settings, error)) return nullptr;

  for (uint32_t i = 0; i < e->config_.threads; i++) {
    e->workers_.push_back(std::make_unique<Worker>(e.get(), int(i)));
    if (!e->workers_.back()->Start(&e->listener_, &e->listenAddress_, error)) {
      e->workers_.pop_back();
      e->Stop();
      for (auto& c : e->allCaptures_) c->Discard();  // nothing was recorded: no empty sessions left behind
      return nullptr;
    }
  }
  // The captures' session.json names the listener, known only now; records posted meanwhile wait.
  for (auto& c : e->allCaptures_) c->Begin(e->ListenText(), e->config_.recorder ? "recorder" : "engine");
  return e;
}

// Sizes a pipe once here, so a size the kernel always refuses (above fs.pipe-max-size without
// CAP_SYS_RESOURCE) fails start() or update() instead of shrinking every connection. A refusal within
// that maximum is the per-user pipe budget, used up for now (maybe by other sidecars of the node): not
// a reason to refuse, since connections degrade one by one (pipeResizeFailures, connectionsSkipped).
bool Engine::Apply(const Settings& settings, StartError* error) {
  uint32_t effective = 0;
  int err = ProbePipeSize(settings.pipeSize, &effective);
  if (err != 0) {
    *error = {err, "fcntl", "F_SETPIPE_SZ " + std::to_string(settings.pipeSize) +
                                " (above /proc/sys/fs/pipe-max-size needs CAP_SYS_RESOURCE; choose a smaller pipeSize)"};
    return false;
  }
  auto next = std::make_shared<ActiveSettings>();
  if (settings.transform) {
    // An unchanged transform (an edit of something else, a target that moved) keeps its profile.
    std::shared_ptr<const ActiveSettings> current = Current();
    if (current && current->transform && currentTransform_ && *currentTransform_ == *settings.transform) {
      next->transform = current->transform;
    } else {
      TransformError xe;
      if (!transforms_) transforms_ = TransformRuntime::Create(&xe);
      if (transforms_) next->transform = transforms_->AddProfile(*settings.transform, &xe);
      if (!next->transform) {
        // Nothing of a refused transform stays loaded: without a profile in use, the program goes too
        // (connections of older profiles keep the runtime alive through them).
        if (!(current && current->transform)) transforms_.reset();
        *error = {EINVAL, "bpf", xe.message, xe.code, xe.log};
        return false;
      }
    }
  }
  next->pipeSize = effective;
  next->turnTimeoutMs = settings.turnTimeoutMs;
  next->mirrorBufferSize = settings.mirrorBufferSize;
  std::lock_guard<std::mutex> lock(settingsMu_);
  // File targets: an unchanged one keeps writing its session; a new or changed one opens a new session
  // (its directories are made now, so that a path that cannot be written fails start() or update()).
  std::map<std::string, std::shared_ptr<CaptureSession>> captures, opened;
  for (const MirrorTarget& m : settings.mirrors) {
    if (!m.file) continue;
    auto it = captures_.find(m.name);
    if (it != captures_.end() && it->second->spec() == *m.file) {
      captures[m.name] = it->second;
      continue;
    }
    auto s = CaptureSession::Create(*m.file, m.name, CountersFor(m.name), flusher_, error);
    if (!s) {
      for (auto& o : opened) o.second->Discard();
      return false;
    }
    captures[m.name] = opened[m.name] = s;
  }
  for (const MirrorTarget& m : settings.mirrors) {
    double pct = std::max(0.0, std::min(100.0, m.samplingPercent));
    std::shared_ptr<TargetCounters> counters = CountersFor(m.name);
    counters->file.store(bool(m.file), std::memory_order_relaxed);
    next->targets.push_back({m.address, uint32_t(pct * 100 + 0.5), counters, m.file ? captures[m.name] : nullptr, m.compareResponses && !m.file});
  }
  for (auto& c : captures) captures_[c.first] = c.second;
  for (auto& o : opened) {
    allCaptures_.push_back(o.second);
    // At start the listener is not bound yet: Start() begins them.
    if (!workers_.empty()) o.second->Begin(ListenText(), config_.recorder ? "recorder" : "engine");
  }
  settings_ = next;
  currentTransform_ = settings.transform;
  return true;
}

bool Engine::Update(const Settings& settings, StartError* error) { return Apply(settings, error); }

std::string Engine::ListenText() const {
  SockAddr a = Unmap(listenAddress_);
  std::string host = FormatHost(a);
  return (a.family() == AF_INET6 ? "[" + host + "]" : host) + ":" + std::to_string(Port(a));
}

uint32_t Engine::pipeSize() const { return Current()->pipeSize; }

std::shared_ptr<const ActiveSettings> Engine::Current() const {
  std::lock_guard<std::mutex> lock(settingsMu_);
  return settings_;
}

std::shared_ptr<TargetCounters> Engine::CountersFor(const std::string& name) {
  auto it = allCounters_.find(name);
  if (it != allCounters_.end()) return it->second;
  auto c = std::make_shared<TargetCounters>(name, config_.threads);
  allCounters_[name] = c;
  order_.push_back(name);
  return c;
}

bool Engine::GrantMirrorBuffer(uint64_t bytes) {
  int64_t used = mirrorBufferInUse_.load(std::memory_order_relaxed);
  do {
    if (uint64_t(used) + bytes > config_.mirrorBufferBudget) return false;
  } while (!mirrorBufferInUse_.compare_exchange_weak(used, used + int64_t(bytes), std::memory_order_relaxed));
  return true;
}

uint64_t Engine::GrantMirrorBufferUpTo(uint64_t want, uint64_t min) {
  int64_t used = mirrorBufferInUse_.load(std::memory_order_relaxed);
  uint64_t give;
  do {
    uint64_t free = uint64_t(used) >= config_.mirrorBufferBudget ? 0 : config_.mirrorBufferBudget - uint64_t(used);
    give = std::min(want, free);
    if (give < min) return 0;
  } while (!mirrorBufferInUse_.compare_exchange_weak(used, used + int64_t(give), std::memory_order_relaxed));
  return give;
}

void Engine::ReleaseMirrorBuffer(uint64_t bytes) { mirrorBufferInUse_.fetch_sub(int64_t(bytes), std::memory_order_relaxed); }

DrainResult Engine::Drain(uint32_t timeoutMs) { return End(kDraining, timeoutMs); }

DrainResult Engine::Stop() { return End(kResetting, 0); }

// The first caller joins the workers; a later one (Stop() during a drain) only raises the mode and waits
// for the same end.
DrainResult Engine::End(Mode mode, uint32_t timeoutMs) {
  {
    std::unique_lock<std::mutex> lock(endMu_);
    if (ended_) return result_;
    if (!endStartedAt_) endStartedAt_ = NowMs();
    if (mode == kDraining && this->mode() == kRunning) drainDeadline_.store(NowMs() + timeoutMs, std::memory_order_release);
    if (mode > this->mode()) mode_.store(mode, std::memory_order_release);
    for (auto& w : workers_) w->Wake();
    if (joining_) {
      endCv_.wait(lock, [this] { return ended_; });
      return result_;
    }
    joining_ = true;
  }
  // Outside the lock, so that Stop() can cut a drain short meanwhile.
  for (auto& w : workers_) w->Join();
  CloseFd(listener_);
  // The workers posted every connection's end; the writers write them and stop. Then the flusher, which
  // leaves what it had not got to (the last 32 MiB or so of each file) to the kernel's own writeback.
  for (auto& c : allCaptures_) c->Close();
  flusher_->Stop();
  DrainResult r;
  for (uint32_t i = 0; i < config_.threads && workerCounters_; i++) {
    r.drained += Read(workerCounters_[i].connectionsDrained);
    r.reset += Read(workerCounters_[i].connectionsReset);
  }
  std::lock_guard<std::mutex> lock(endMu_);
  workers_.clear();  // closes their wake fds and pooled pipes; Wake() is only called under endMu_
  r.ms = NowMs() - endStartedAt_;
  result_ = r;
  ended_ = true;
  endCv_.notify_all();
  return result_;
}

Stats Engine::Snapshot() const {
  Stats s;
  for (uint32_t i = 0; i < config_.threads; i++) {
    const WorkerCounters& k = workerCounters_[i];
    // Closed before accepted: a worker's accepted count never trails its closed count.
    uint64_t closed = Read(k.connectionsClosed), accepted = Read(k.connectionsAccepted);
    s.connectionsClosed += closed;
    s.connectionsAccepted += accepted;
    s.connectionsActive += int64_t(accepted >= closed ? accepted - closed : 0);
    s.upstreamConnectFailures += Read(k.upstreamConnectFailures);
    s.setupFailures += Read(k.setupFailures);
    s.connectionsReset += Read(k.connectionsReset);
    s.resetFailures += Read(k.resetFailures);
    s.acceptPauses += Read(k.acceptPauses);
    s.pipeResizeFailures += Read(k.pipeResizeFailures);
    s.bytesClientToApp += Read(k.bytesClientToApp);
    s.bytesAppToClient += Read(k.bytesAppToClient);
    s.pipesInUse += Read(k.pipesInUse);
    s.pipesPooled += Read(k.pipesPooled);
    s.pipeBytesInUse += Read(k.pipeBytesInUse);
    s.pipeBytesPooled += Read(k.pipeBytesPooled);
    s.mirrorBufferDenied += Read(k.mirrorBufferDenied);
    s.workerFailures += Read(k.workerFailures);
    s.transformFailures += Read(k.transformFailures);
  }
  s.mirrorBufferInUse = uint64_t(std::max<int64_t>(0, mirrorBufferInUse_.load(std::memory_order_relaxed)));
  s.mirrorBufferBudget = config_.mirrorBufferBudget;
  std::lock_guard<std::mutex> lock(settingsMu_);
  // Current targets, and removed ones while they still have connections open.
  std::set<std::string> current;
  if (settings_)
    for (const ActiveTarget& t : settings_->targets) current.insert(t.counters->name);
  for (const std::string& name : order_) {
    const TargetCounters& t = *allCounters_.at(name);
    TargetStats ts;
    ts.name = name;
    uint64_t closed = 0;
    for (size_t i = 0; i < t.count; i++) {
      const TargetSlot& k = t.slots[i];
      closed += Read(k.connectionsClosed);
      ts.connectionsMirrored += Read(k.connectionsMirrored);
      ts.connectionsCut += Read(k.connectionsCut);
      ts.connectFailures += Read(k.connectFailures);
      ts.connectionsSkipped += Read(k.connectionsSkipped);
      ts.bytesMirrored += Read(k.bytesMirrored);
      ts.bytesDropped += Read(k.bytesDropped);
      ts.turnWaitsExpired += Read(k.turnWaitsExpired);
      ts.responsesCompared += Read(k.responsesCompared);
      ts.responsesDiverged += Read(k.responsesDiverged);
      ts.transformFailures += Read(k.transformFailures);
      ts.connectionsNotRecorded += Read(k.connectionsNotRecorded);
      ts.capturesCutFull += Read(k.capturesCutFull);
      ts.capturesCutSlow += Read(k.capturesCutSlow);
      ts.captureHolds += Read(k.captureHolds);
    }
    ts.file = t.file.load(std::memory_order_relaxed);
    if (ts.file) {
      // The writer's figures: what is in the files, what a failed write lost.
      ts.bytesMirrored += t.capture.bytesWritten.load(std::memory_order_relaxed);
      ts.bytesDropped += t.capture.bytesLost.load(std::memory_order_relaxed);
      ts.responseBytes = t.capture.responseBytes.load(std::memory_order_relaxed);
      ts.capturesCutDisk = t.capture.cutsDisk.load(std::memory_order_relaxed);
      ts.bytesWrittenBack = t.capture.bytesWrittenBack.load(std::memory_order_relaxed);
      ts.connectionsCut += ts.capturesCutDisk;
      auto c = captures_.find(name);
      if (c != captures_.end()) ts.captureSession = c->second->path();
    }
    // A skipped leg counts as closed but not as mirrored.
    uint64_t opened = ts.connectionsMirrored + ts.connectionsSkipped;
    ts.connectionsActive = int64_t(opened >= closed ? opened - closed : 0);
    if (!current.count(name) && ts.connectionsActive == 0) continue;
    s.targets.push_back(ts);
  }
  return s;
}

}  // namespace engine
}  // namespace kstreams
