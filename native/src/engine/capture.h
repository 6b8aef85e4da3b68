// A capture: a mirror target that records connections into files (docs/capture.md, format version 1)
// instead of sending them to a socket. The session (one per file target and engine) owns the capture's
// directory and one writer thread; the workers only tee() stream bytes into each connection's capture
// pipes (non-blocking, like a mirror) and post what they did; the writer splices the pipes into the data
// files and appends the index. Why a thread of its own: writing to a regular file blocks whatever
// O_NONBLOCK says (page cache, writeback, ENOSPC), and the epoll worker that pumps the primary must never
// block. A writer that falls behind fills the connection's pipes, and the worker then cuts that capture.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "counters.h"
#include "flusher.h"

namespace kstreams {
namespace engine {

struct StartError;

// spec ...file, as the engine gets it.
struct CaptureSpec {
  std::string dir;
  bool responses = false;
  uint64_t maxBytes = 0;            // data bytes of the whole capture (both directions); 0: none
  uint64_t maxConnectionBytes = 0;  // data bytes of one connection (both directions); 0: none
  bool operator==(const CaptureSpec& o) const {
    return dir == o.dir && responses == o.responses && maxBytes == o.maxBytes && maxConnectionBytes == o.maxConnectionBytes;
  }
};

// One recorded connection, shared by its leg (worker side) and the writer. Each direction has a lane: a
// capture pipe the worker tee()s into and a socket pair the worker moves the pipe's bytes into (the
// lane's slack, like a mirror's send buffer: file_leg.h). The worker owns the pipes and its socket ends
// until it posts the end; the writer reads only its socket ends (c2sSock, s2cSock) until then, and the
// pipes only after the end (what the sockets could not take); it owns the files and closes everything at
// the end (a data file once the engine's flusher is done with it too: CaptureFile).
struct CaptureConn {
  uint64_t id = 0;
  int c2sRd = -1, c2sWr = -1, s2cRd = -1, s2cWr = -1;
  int c2sSock = -1, s2cSock = -1;  // the writer's ends of the lanes' socket pairs
  // Set by the writer when a write failed (disk full, I/O error): the worker cuts the capture.
  std::atomic<bool> failed{false};
  // Writer side.
  std::shared_ptr<CaptureFile> c2sFile, s2cFile;
  int idxFd = -1;
  uint64_t c2sWritten = 0, s2cWritten = 0;
  uint64_t idxLength = 0;
  ~CaptureConn();
};

// What a worker tells the writer, in the order it happened for that connection.
struct CaptureOp {
  enum Kind : uint8_t { kOpen, kC2s, kS2c, kTurn, kEnd };
  CaptureOp(Kind k, std::shared_ptr<CaptureConn> c) : kind(k), conn(std::move(c)) {}
  Kind kind;
  std::shared_ptr<CaptureConn> conn;
  uint64_t ns = 0;    // CLOCK_MONOTONIC
  uint64_t bytes = 0; // kC2s / kS2c: bytes of that lane, in its socket (or, fromPipe, in its pipe)
  bool fromPipe = false;  // posted at the leg's end only: bytes the socket could not take, still in the pipe
  uint32_t turn = 0;
  uint64_t c2s = 0, s2c = 0;  // kTurn: offsets
  std::string text;   // kOpen: the record's fields; kEnd: how (fin, rst, cut; disk: cut for a failed write)
};

uint64_t MonotonicNs();

class CaptureSession {
 public:
  // Creates DIR (if missing), the session directory and conns/: *error (naming the path) when it cannot.
  // `flusher`: the engine's, which keeps the data files' page cache bounded.
  static std::shared_ptr<CaptureSession> Create(const CaptureSpec& spec, const std::string& target,
                                                std::shared_ptr<TargetCounters> counters,
                                                std::shared_ptr<CaptureFlusher> flusher, StartError* error);
  ~CaptureSession();
  // Writes session.json and starts the writer; ops posted before wait for it. Idempotent.
  // `writer`: engine, or recorder (docs/capture.md).
  void Begin(const std::string& listen, const char* writer);
  // Removes the (still empty) directories of a session that was never used: a failed start or update.
  void Discard();
  // Lets the writer finish what was posted, then joins it. Only once no leg posts any more.
  void Close();

  const CaptureSpec& spec() const { return spec_; }
  const std::string& path() const { return path_; }

  // Worker side.
  // A new connection's id; 0 when the capture is full (maxBytes reached, or the disk was found full).
  uint64_t NextId();
  // Up to `want` bytes of the capture's maxBytes; what was granted (less: the capture is now full).
  uint64_t Reserve(uint64_t want);
  void Unreserve(uint64_t bytes) {
    if (spec_.maxBytes) reserved_.fetch_sub(bytes, std::memory_order_relaxed);
  }
  bool full() const { return full_.load(std::memory_order_relaxed); }
  void Post(CaptureOp&& op);

 private:
  CaptureSession(const CaptureSpec& spec, std::string target, std::shared_ptr<TargetCounters> counters,
                 std::shared_ptr<CaptureFlusher> flusher);
  void Run();
  void Handle(CaptureOp& op);
  bool OpenFiles(CaptureConn& c);
  static constexpr uint32_t kPassPipe = 1u << 20;
  bool MakePass();
  // Appends one index line; false (and the index cut back to its last whole line) when it failed.
  bool AppendIndex(CaptureConn& c, const std::string& line);
  // Splices `bytes` of a lane (from its socket through the writer's pipe, or fromPipe from its capture
  // pipe) into its data file; on failure the rest is lost (counted).
  void Write(CaptureConn& c, bool c2s, uint64_t bytes, bool fromPipe);
  // Moves up to `bytes` from `from` into `file`; the bytes written, or -1 (errno set) when a write failed.
  int64_t SpliceToFile(CaptureConn& c, int from, const std::shared_ptr<CaptureFile>& file, uint64_t& written, uint64_t bytes);
  void Fail(CaptureConn& c, int err);

  CaptureSpec spec_;
  std::string target_, path_, conns_;
  std::shared_ptr<TargetCounters> counters_;
  std::shared_ptr<CaptureFlusher> flusher_;
  std::atomic<uint64_t> nextId_{0};
  std::atomic<uint64_t> reserved_{0};
  std::atomic<bool> full_{false};

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<CaptureOp> ops_;
  bool stopping_ = false, begun_ = false, closed_ = false;
  std::thread thread_;
  // The writer's own pipe, between a lane's socket and its data file (splice needs a pipe on one side);
  // empty between two writes.
  int passRd_ = -1, passWr_ = -1;
  uint64_t startedNs_ = 0;
  std::string startedAt_;
};

}  // namespace engine
}  // namespace kstreams
