// The replayer: plays the connections of a capture (docs/capture.md) against a target, one native thread
// with epoll. Per connection a new socket; the client's bytes go from the c2s file to the socket with
// sendfile() (no user-space copy), turn by turn: before each turn it waits for the target's answer to the
// previous one (as many bytes as the recorded answer when the capture has s2c, else first bytes then a
// short quiet), and for the recorded gap between turn starts scaled by the speed factor. Answers are
// discarded in the kernel (MSG_TRUNC) unless compared with the s2c file, which reads them.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../engine/address.h"

namespace kstreams {
namespace replay {

enum class End : uint8_t { kFin, kRst, kCut };

struct TurnSpec {
  uint64_t c2s = 0;   // where the turn's client bytes start in the c2s file
  uint64_t s2c = 0;   // the app's bytes sent before the turn started (with responses)
  uint64_t atNs = 0;  // from the connection's open
};

struct ConnSpec {
  std::string c2sPath;
  std::string s2cPath;  // empty: no response bytes recorded
  bool responses = false;
  uint64_t startNs = 0;  // from the capture's first open
  // When the recorded connection ended, on the same timeline; kNoEnd when that is not known (cut by the
  // capture while it went on, or no end record): then no connection is held back for it.
  static constexpr uint64_t kNoEnd = UINT64_MAX;
  uint64_t endNs = kNoEnd;
  std::vector<TurnSpec> turns;
  uint64_t endC2s = 0;
  uint64_t endS2c = 0;
  End how = End::kFin;
};

struct Config {
  engine::SockAddr target;
  std::string netnsPath;
  double speed = 1;  // 0: no gaps, as fast as the target allows
  uint32_t concurrency = 256;
  uint32_t loops = 1;
  bool compare = false;
  uint32_t answerTimeoutMs = 5000;
  uint32_t quietMs = 5;
  uint32_t connectTimeoutMs = 5000;
  uint32_t stallTimeoutMs = 30000;
};

// Why a connection did not replay.
enum Failure : int {
  kConnect = 0,  // refused, unreachable, timed out
  kReset,        // the target reset the connection (or a send met EPIPE) before the replay ended
  kClosed,       // the target closed its side while turns were still to be sent
  kStalled,      // the target took no bytes for stallTimeoutMs
  kFile,         // a data file could not be opened or read (shorter than the index said)
  kFailureKinds,
};
const char* FailureName(int failure);

struct Outcome {
  uint32_t conn = 0;
  uint32_t loop = 0;
  int failure = -1;  // -1: replayed
  int err = 0;       // errno of the failure
  std::string syscall;
  uint64_t bytesSent = 0;
  uint64_t bytesReceived = 0;
  uint64_t turnsSent = 0;
  bool differs = false;
  uint64_t differsAt = 0;  // offset in the s2c stream of the first byte that differs
  std::string got;         // up to kExcerpt bytes from there: the target's
  std::string want;        //   and the recording's
};

struct Stats {
  uint64_t started = 0, replayed = 0, failed = 0, active = 0;
  uint64_t bytesSent = 0, bytesReceived = 0, turns = 0, turnWaitsExpired = 0;
  uint64_t same = 0, differ = 0;
  uint64_t failures[kFailureKinds] = {};
  uint64_t loop = 0;
};

struct Result {
  Stats stats;
  std::vector<Outcome> outcomes;  // connections that failed or differ
  bool aborted = false;           // the first connection could not connect: the target is unreachable
  int abortErr = 0;
  std::string abortSyscall;
  bool cancelled = false;
  uint64_t ns = 0;
};

struct StartError {
  int err = 0;
  std::string syscall;
  std::string what;
};

class Replayer {
 public:
  static constexpr size_t kExcerpt = 32;

  // Starts the thread (which enters config.netnsPath first); null with *error when setup failed.
  static std::unique_ptr<Replayer> Start(Config config, std::vector<ConnSpec> conns, StartError* error);
  ~Replayer();

  Stats Snapshot() const;
  // Resets the connections still open and ends the replay.
  void Cancel();
  // Joins the thread (once); later calls return the same result.
  const Result& Wait();

 private:
  struct Live;
  struct Counters;
  Replayer(Config config, std::vector<ConnSpec> conns);
  bool Setup(StartError* error);
  void Run();

  Config config_;
  std::vector<ConnSpec> conns_;
  std::unique_ptr<Counters> k_;
  int epfd_ = -1;
  int wakeFd_ = -1;
  std::atomic<bool> cancel_{false};
  std::thread thread_;
  std::mutex joinMu_;
  bool joined_ = false;
  Result result_;
};

}  // namespace replay
}  // namespace kstreams
