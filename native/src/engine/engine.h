// The stream engine: a TCP proxy whose bytes never leave the kernel. Per connection, client bytes are
// spliced into a pipe, offered to every leg (a mirror: tee() into its private pipe, paced by the
// conversation's turns), then spliced to the app; app bytes are spliced back to the client. Worker
// threads on edge-triggered epoll own the connections; nothing here knows about Node, so the engine can
// be driven (and tested) from plain C++. Files: address (addresses, sampling), pipes (sizing, the pool),
// accept_policy, counters, leg + mirror_leg + file_leg (with capture: a capture session and its writer),
// connection, primary (the primary pump), worker (the loop),
// engine (this facade).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "address.h"
#include "config.h"
#include "counters.h"

namespace kstreams {
namespace engine {

// What went wrong while starting: errno, the failing call and on what (for a Node-style error).
struct StartError {
  StartError() = default;
  StartError(int e, std::string call, std::string on, std::string c = {}, std::string l = {})
      : err(e), syscall(std::move(call)), what(std::move(on)), code(std::move(c)), log(std::move(l)) {}
  int err = 0;
  std::string syscall;
  std::string what;
  // Set for a transform that could not be loaded: our own code (ProgramRejected, ...), and the
  // verifier's output verbatim.
  std::string code;
  std::string log;
};

class Worker;
class CaptureFlusher;

class Engine {
 public:
  enum Mode : int { kRunning = 0, kDraining = 1, kResetting = 2 };

  // Starts the workers; returns once the listener is bound and listening, or nullptr with *error set.
  static std::unique_ptr<Engine> Start(const Config& config, StartError* error);
  ~Engine();  // resets and stops if still running

  const SockAddr& listenAddress() const { return listenAddress_; }
  int listenerFd() const { return listener_; }
  // Effective size of each pipe for new connections (F_SETPIPE_SZ rounds up to a power of two pages).
  uint32_t pipeSize() const;

  Stats Snapshot() const;
  // New connections use the new settings; existing ones keep theirs. Counters persist per target name.
  // A pipe size the kernel always refuses fails (error set, settings unchanged).
  bool Update(const Settings& settings, StartError* error);
  // Stops accepting (after taking what is in the backlog), lets live connections end until the
  // deadline, resets the rest both ways, joins the workers. Blocking; thread-safe; Stop() cuts it short.
  DrainResult Drain(uint32_t timeoutMs);
  // Resets every live connection at once and joins the workers. Idempotent, thread-safe.
  DrainResult Stop();

  // For the workers.
  std::shared_ptr<const ActiveSettings> Current() const;
  Mode mode() const { return Mode(mode_.load(std::memory_order_acquire)); }
  uint64_t drainDeadline() const { return drainDeadline_.load(std::memory_order_acquire); }
  const Config& config() const { return config_; }
  const SockAddr& upstreamSource4() const { return source4_; }
  const SockAddr& upstreamSource6() const { return source6_; }
  WorkerCounters& countersOf(int worker) { return workerCounters_[size_t(worker)]; }
  bool GrantMirrorBuffer(uint64_t bytes);
  // As much of `want` as the budget has, if that is at least `min`; 0 otherwise.
  uint64_t GrantMirrorBufferUpTo(uint64_t want, uint64_t min);
  void ReleaseMirrorBuffer(uint64_t bytes);

 private:
  explicit Engine(const Config& config);
  std::shared_ptr<TargetCounters> CountersFor(const std::string& name);
  bool Apply(const Settings& settings, StartError* error);
  DrainResult End(Mode mode, uint32_t timeoutMs);

  Config config_;
  SockAddr listenAddress_;
  SockAddr source4_, source6_;  // family 0 when upstreamSource has no address of that family
  int listener_ = -1;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<WorkerCounters[]> workerCounters_;

  mutable std::mutex settingsMu_;
  std::shared_ptr<const ActiveSettings> settings_;
  std::map<std::string, std::shared_ptr<TargetCounters>> allCounters_;
  std::vector<std::string> order_;  // names in the order first configured
  // File targets: the capture each name writes now, and every capture opened (closed at the end, after
  // the workers, so that their last records are written).
  std::map<std::string, std::shared_ptr<CaptureSession>> captures_;
  std::vector<std::shared_ptr<CaptureSession>> allCaptures_;
  // Keeps the captures' page cache bounded (flusher.h): one thread for all of them, started with the
  // first data file, stopped after the captures' writers.
  std::shared_ptr<CaptureFlusher> flusher_;
  std::string ListenText() const;

  std::atomic<int64_t> mirrorBufferInUse_{0};
  // Loaded with the first transform (start or update) and kept for the engine's life.
  std::shared_ptr<TransformRuntime> transforms_;
  std::shared_ptr<const TransformSpec> currentTransform_;  // what settings_->transform was loaded from

  std::atomic<int> mode_{kRunning};
  std::atomic<uint64_t> drainDeadline_{0};
  std::mutex endMu_;
  std::condition_variable endCv_;
  bool joining_ = false, ended_ = false;
  uint64_t endStartedAt_ = 0;
  DrainResult result_;
};

}  // namespace engine
}  // namespace kstreams
