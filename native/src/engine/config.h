// What the engine is asked to do: the start-up configuration, and the settings that may change while it
// runs (they apply to connections accepted from then on).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "address.h"
#include "capture.h"
#include "counters.h"
#include "transform.h"

namespace kstreams {
namespace engine {

struct MirrorTarget {
  std::string name;
  SockAddr address;
  double samplingPercent = 100;  // 0..100
  // A file target (a capture) instead of an address; null: a socket target.
  std::shared_ptr<const CaptureSpec> file;
  // Compare the target's answers with the app's answers of the same connection (socket targets).
  bool compareResponses = false;
};

// Live settings (Engine::Update).
struct Settings {
  std::vector<MirrorTarget> mirrors;
  uint32_t pipeSize = 1 << 20;
  // A mirror's next turn waits this long for the target's answer to the previous one; 0: no pacing.
  uint32_t turnTimeoutMs = 1000;
  // SO_SNDBUF a lagging mirror connection may grow to, within the engine's mirrorBufferBudget.
  uint32_t mirrorBufferSize = 4u << 20;
  // spec.transform, encoded; null: none.
  std::shared_ptr<const TransformSpec> transform;
};

struct Config {
  std::string netnsPath;  // empty: the caller's namespace
  SockAddr listen;        // family 0: dual-stack [::]:0
  bool upstreamOriginalDestination = false;
  // A recorder (`kstreams record`): no app; the client's bytes go to the legs only (a capture) and are
  // then discarded in the kernel (P is spliced to /dev/null). A client turn starts after `recorderTurnGapMs`
  // of silence, since there are no answers to end one.
  bool recorder = false;
  uint32_t recorderTurnGapMs = 50;
  SockAddr upstream;      // when !upstreamOriginalDestination
  // Bound (with IP_FREEBIND / IPV6_FREEBIND) as the source of upstream connections, at most one per
  // family; an upstream of a family without one is left unbound. The sk_lookup program lets these
  // sources through to the app, so the defaults must equal its bypass defaults (native/lib/types.ts
  // DEFAULT_UPSTREAM_SOURCES). 127.0.0.6 reaches the pod's non-loopback IPv4 addresses (local routes go
  // through lo), and ::1 its non-loopback IPv6 addresses (measured, docs/adr/0004-ipv6-bypass.md).
  // Loopback sources cannot reach a remote upstream: pass none for that.
  std::vector<std::string> upstreamSources = {"127.0.0.6", "::1"};
  Settings settings;
  uint32_t mirrorConnectTimeoutMs = 3000;
  uint64_t mirrorBufferBudget = 64u << 20;
  uint32_t threads = 1;
};

// A target as the workers use it: address, sampling threshold and its (persistent) counters.
struct ActiveTarget {
  SockAddr address;
  uint32_t threshold;  // mirrored when bucket < threshold
  std::shared_ptr<TargetCounters> counters;
  // File targets: the capture their connections are recorded in (address unused).
  std::shared_ptr<CaptureSession> capture;
  bool compareResponses = false;
};

// The settings a new connection is opened with, resolved; shared by the workers, replaced whole.
struct ActiveSettings {
  std::vector<ActiveTarget> targets;
  uint32_t pipeSize;  // effective (rounded by the kernel)
  uint32_t turnTimeoutMs;
  uint32_t mirrorBufferSize;
  // The transform new connections get (its profile lives while they do); null: none.
  std::shared_ptr<const TransformProfile> transform;
};

}  // namespace engine
}  // namespace kstreams
