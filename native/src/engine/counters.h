// Counters: each worker writes its own cache line (single writer, relaxed stores, no locked
// read-modify-write on the data path); Engine::Snapshot() sums the workers.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kstreams {
namespace engine {

using Counter = std::atomic<uint64_t>;

// Only the owning worker writes a counter, so a load and a store replace a locked fetch_add.
inline void Add(Counter& c, uint64_t n = 1) { c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
inline uint64_t Read(const Counter& c) { return c.load(std::memory_order_relaxed); }

struct alignas(64) WorkerCounters {
  Counter connectionsAccepted{0};
  Counter connectionsClosed{0};
  Counter upstreamConnectFailures{0};
  // Accepted connections that could not be set up (pipe, socket, epoll registration failed).
  Counter setupFailures{0};
  // Open connections reset both ways by a drain's deadline or by stop().
  Counter connectionsReset{0};
  // Connections that ended by themselves while the engine was draining.
  Counter connectionsDrained{0};
  // Closes with reset whose SO_LINGER the kernel refused (they may have ended with a FIN).
  Counter resetFailures{0};
  // Times a worker stopped polling the listener for lack of file descriptors (EMFILE, ENFILE, ...).
  Counter acceptPauses{0};
  // Connections whose primary pipes kept a smaller size than asked: F_SETPIPE_SZ was refused (the
  // per-user pipe budget without CAP_SYS_RESOURCE). They are proxied all the same, more slowly.
  Counter pipeResizeFailures{0};
  Counter bytesClientToApp{0};
  Counter bytesAppToClient{0};
  Counter mirrorBufferDenied{0};
  // Gauges, written by the worker after each event batch.
  Counter pipesInUse{0}, pipesPooled{0}, pipeBytesInUse{0}, pipeBytesPooled{0};
  // epoll_wait failed: the worker reset its connections and stopped.
  Counter workerFailures{0};
  // Connections reset because the transform of their bytes to the app could not be applied (the
  // upstream socket could not be attached, or the program failed): never forwarded untransformed.
  Counter transformFailures{0};
};

struct alignas(64) TargetSlot {
  Counter connectionsMirrored{0};
  Counter connectionsClosed{0};  // mirror connections of this target closed, whatever the reason
  Counter connectionsCut{0};
  Counter connectFailures{0};
  // Sampled connections left unmirrored because the kernel refused the mirror pipe (pipe2() failed, or
  // F_SETPIPE_SZ could not give it room for whole batches of the primary pipe: the per-user pipe budget).
  Counter connectionsSkipped{0};
  Counter bytesMirrored{0};
  Counter bytesDropped{0};
  Counter turnWaitsExpired{0};
  // compareResponses: mirror connections whose answers were compared with the app's to the end, and
  // those of them whose answers differed.
  Counter responsesCompared{0};
  Counter responsesDiverged{0};
  // Mirror connections closed (reset) or not opened because their transform could not be applied.
  Counter transformFailures{0};
  // File targets (capture.h): sampled connections not recorded because the capture was full, and
  // captures cut because maxBytes / maxConnectionBytes was reached, or because the writer fell behind
  // (the capture pipe was full: the disk is too slow).
  Counter connectionsNotRecorded{0};
  Counter capturesCutFull{0};
  Counter capturesCutSlow{0};
  // A recorder's (upstream none): times a connection's client was held back (not read) until the writer
  // had drained its capture pipe, instead of a cut.
  Counter captureHolds{0};
};

// What a capture's writer thread counts (one writer per session; fetch_add: an old session of the same
// name may still be finishing).
struct CaptureTotals {
  std::atomic<uint64_t> bytesWritten{0};   // client -> app bytes in the data files (the target's bytesMirrored)
  std::atomic<uint64_t> responseBytes{0};  // app -> client bytes in the data files
  std::atomic<uint64_t> bytesLost{0};      // client bytes tee'd but never written (a failed write)
  std::atomic<uint64_t> cutsDisk{0};       // captures cut because a write failed (ENOSPC, EDQUOT, EIO)
  std::atomic<uint64_t> connectionsWritten{0};  // connections whose end record was written
  // Data bytes (both directions) the engine's flusher (flusher.h) wrote back and dropped from the page cache.
  std::atomic<uint64_t> bytesWrittenBack{0};
};

// One mirror target's counters, one slot per worker; kept per target name for the engine's lifetime.
struct TargetCounters {
  TargetCounters(std::string n, size_t workers) : name(std::move(n)), slots(new TargetSlot[workers]), count(workers) {}
  std::string name;
  std::unique_ptr<TargetSlot[]> slots;
  size_t count;
  TargetSlot& at(int worker) { return slots[size_t(worker)]; }
  CaptureTotals capture;
  std::atomic<bool> file{false};  // a file target (capture.h) as last configured
};

struct TargetStats {
  std::string name;
  uint64_t connectionsMirrored = 0, connectionsCut = 0, connectFailures = 0, connectionsSkipped = 0;
  int64_t connectionsActive = 0;
  uint64_t bytesMirrored = 0, bytesDropped = 0, turnWaitsExpired = 0, transformFailures = 0;
  uint64_t responsesCompared = 0, responsesDiverged = 0;
  // File targets only.
  bool file = false;
  std::string captureSession;  // the session directory being written
  uint64_t responseBytes = 0, connectionsNotRecorded = 0, capturesCutFull = 0, capturesCutSlow = 0, capturesCutDisk = 0;
  uint64_t captureHolds = 0;
  uint64_t bytesWrittenBack = 0;
};

struct Stats {
  uint64_t connectionsAccepted = 0;
  int64_t connectionsActive = 0;
  uint64_t connectionsClosed = 0;
  uint64_t upstreamConnectFailures = 0;
  uint64_t setupFailures = 0;
  uint64_t connectionsReset = 0;
  uint64_t resetFailures = 0;
  uint64_t acceptPauses = 0;
  uint64_t pipeResizeFailures = 0;
  uint64_t bytesClientToApp = 0;
  uint64_t bytesAppToClient = 0;
  uint64_t pipesInUse = 0, pipesPooled = 0, pipeBytesInUse = 0, pipeBytesPooled = 0;
  uint64_t mirrorBufferInUse = 0, mirrorBufferBudget = 0, mirrorBufferDenied = 0;
  uint64_t workerFailures = 0;
  uint64_t transformFailures = 0;
  std::vector<TargetStats> targets;
};

// How Drain()/Stop() ended.
struct DrainResult {
  uint64_t drained = 0;
  uint64_t reset = 0;
  uint64_t ms = 0;
};

}  // namespace engine
}  // namespace kstreams
