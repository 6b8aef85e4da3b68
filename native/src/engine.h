// The stream engine: a TCP proxy whose bytes never leave the kernel. Per connection, client bytes are
// spliced into a pipe, tee()d into one private pipe per mirror, then spliced to the app; app bytes are
// spliced back to the client. Worker threads on edge-triggered epoll own the connections; nothing here
// knows about Node, so the engine can be driven (and tested) from plain C++.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace kstreams {
namespace engine {

// A resolved numeric address and port.
struct SockAddr {
  sockaddr_storage storage{};
  socklen_t len = 0;
  int family() const { return storage.ss_family; }
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

// Parses a numeric IPv4/IPv6 host and a port; false when the host is not a numeric address.
bool ParseAddress(const std::string& host, uint16_t port, SockAddr* out);
// Numeric host and port of an address (v4-mapped IPv6 addresses are shown as IPv4).
std::string FormatHost(const SockAddr& addr);
uint16_t Port(const SockAddr& addr);

// 0..9999: the consistent hash of a connection's 4-tuple (client, original destination). A v4-mapped
// IPv6 address hashes like its IPv4 form, so the dual-stack listener and a v4 caller agree.
uint32_t SamplingBucket(const SockAddr& src, const SockAddr& dst);

struct MirrorTarget {
  std::string name;
  SockAddr address;
  double samplingPercent = 100;  // 0..100
};

struct Config {
  std::string netnsPath;  // empty: the caller's namespace
  SockAddr listen;        // family 0: dual-stack [::]:0
  bool upstreamOriginalDestination = false;
  SockAddr upstream;      // when !upstreamOriginalDestination
  // Bound (with IP_FREEBIND / IPV6_FREEBIND) as the source of upstream connections, at most one per
  // family; an upstream of a family without one is left unbound. The sk_lookup program lets these
  // sources through to the app, so the defaults must equal its bypass defaults (native/lib/types.ts
  // DEFAULT_UPSTREAM_SOURCES). 127.0.0.6 reaches the pod's non-loopback IPv4 addresses (local routes go
  // through lo), and ::1 its non-loopback IPv6 addresses (measured, docs/adr/0004-ipv6-bypass.md).
  // Loopback sources cannot reach a remote upstream: pass none for that.
  std::vector<std::string> upstreamSources = {"127.0.0.6", "::1"};
  std::vector<MirrorTarget> mirrors;
  uint32_t pipeSize = 1 << 20;
  uint32_t mirrorConnectTimeoutMs = 3000;
  uint32_t threads = 1;
};

// Relaxed atomics, written by the workers, read by Stats() snapshots.
struct TargetCounters {
  std::string name;
  std::atomic<uint64_t> connectionsMirrored{0};
  std::atomic<uint64_t> connectionsCut{0};
  std::atomic<uint64_t> connectFailures{0};
  // Sampled connections left unmirrored because the kernel refused the mirror pipe (pipe2() failed, or
  // F_SETPIPE_SZ could not give it room for whole batches of the primary pipe: the per-user pipe budget).
  std::atomic<uint64_t> connectionsSkipped{0};
  std::atomic<int64_t> connectionsActive{0};
  std::atomic<uint64_t> bytesMirrored{0};
  std::atomic<uint64_t> bytesDropped{0};
};

struct TargetStats {
  std::string name;
  uint64_t connectionsMirrored, connectionsCut, connectFailures, connectionsSkipped;
  int64_t connectionsActive;
  uint64_t bytesMirrored, bytesDropped;
};

struct Stats {
  uint64_t connectionsAccepted = 0;
  int64_t connectionsActive = 0;
  uint64_t connectionsClosed = 0;
  uint64_t upstreamConnectFailures = 0;
  uint64_t acceptPauses = 0;
  uint64_t pipeResizeFailures = 0;
  uint64_t bytesClientToApp = 0;
  uint64_t bytesAppToClient = 0;
  std::vector<TargetStats> targets;
};

// What went wrong while starting: errno, the failing call and on what (for a Node-style error).
struct StartError {
  int err = 0;
  std::string syscall;
  std::string what;
};

// A target as the workers use it: address, sampling threshold and its (persistent) counters.
struct ActiveTarget {
  SockAddr address;
  uint32_t threshold;  // mirrored when bucket < threshold
  std::shared_ptr<TargetCounters> counters;
};
using TargetSet = std::vector<ActiveTarget>;

class Worker;

class Engine {
 public:
  // Starts the workers; returns once the listener is bound and listening, or nullptr with *error set.
  static std::unique_ptr<Engine> Start(const Config& config, StartError* error);
  ~Engine();  // stops if still running

  const SockAddr& listenAddress() const { return listenAddress_; }
  int listenerFd() const { return listener_; }
  // Effective size of each pipe (F_SETPIPE_SZ rounds up to a power of two pages). A connection's pipes may
  // be smaller when the kernel refuses to enlarge them (pipeResizeFailures, connectionsSkipped).
  uint32_t pipeSize() const { return pipeSize_; }

  Stats Snapshot() const;
  // New connections use the new set; existing ones keep theirs. Counters persist per target name.
  void UpdateMirrors(const std::vector<MirrorTarget>& mirrors);
  // Closes the listener and every connection, joins the workers. Idempotent, thread-safe.
  void Stop();

  // For the workers.
  std::shared_ptr<const TargetSet> CurrentTargets() const;
  struct Counters {
    std::atomic<uint64_t> connectionsAccepted{0};
    std::atomic<uint64_t> connectionsClosed{0};
    std::atomic<uint64_t> upstreamConnectFailures{0};
    // Times a worker stopped polling the listener for lack of file descriptors (EMFILE, ENFILE, ...).
    std::atomic<uint64_t> acceptPauses{0};
    // Connections whose primary pipes kept a smaller size than asked: F_SETPIPE_SZ was refused (the
    // per-user pipe budget without CAP_SYS_RESOURCE). They are proxied all the same, more slowly.
    std::atomic<uint64_t> pipeResizeFailures{0};
    std::atomic<uint64_t> bytesClientToApp{0};
    std::atomic<uint64_t> bytesAppToClient{0};
  } counters;
  const Config& config() const { return config_; }
  const SockAddr& upstreamSource4() const { return source4_; }
  const SockAddr& upstreamSource6() const { return source6_; }

 private:
  explicit Engine(const Config& config);
  std::shared_ptr<TargetCounters> CountersFor(const std::string& name);

  Config config_;
  SockAddr listenAddress_;
  SockAddr source4_, source6_;  // family 0 when upstreamSource has no address of that family
  int listener_ = -1;
  uint32_t pipeSize_ = 0;
  std::vector<std::unique_ptr<Worker>> workers_;

  mutable std::mutex targetsMu_;
  std::shared_ptr<const TargetSet> targets_;
  std::map<std::string, std::shared_ptr<TargetCounters>> allCounters_;
  std::vector<std::string> order_;  // names in the order first configured

  std::mutex stopMu_;
  bool stopped_ = false;
};

}  // namespace engine
}  // namespace kstreams
