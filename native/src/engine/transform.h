// In-kernel transforms (docs/adr/0006-in-kernel-transforms.md): the sk_msg program of
// native/bpf/transform.bpf.c on a SOCKHASH, one loaded object per engine. A transformed sink (a mirror
// socket, or the upstream socket to the app) is put into the hash, with its per-socket state, before its
// first byte; from then on every send on it runs the program over the bytes in the kernel's own copy.
//
// The engine keeps three promises around it:
//  - every byte is transformed or none leaves: a sink that cannot be attached is not opened, the program
//    drops (EACCES) whatever it cannot transform, and after every send the ledger proves that the
//    program examined exactly the bytes the kernel took (the kernel runs a socket's next send without
//    the program when the previous one failed after the verdict; the leg is closed before that);
//  - a send never exceeds the socket's free send-buffer space (SO_MEMINFO), so that the kernel takes it
//    whole (see above);
//  - bytes an op holds back (a pattern possibly split across sends) are released by a flush: a one-byte
//    trigger write that the program removes.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

struct xf_ledger;
struct transform_bpf;

namespace kstreams {
namespace engine {

struct TransformOp {
  uint8_t kind = 0;  // enum xf_kind
  uint8_t with = '*';
  std::string a, b;  // bytes; byteMap: a is the 256-byte table
  bool operator==(const TransformOp& o) const { return kind == o.kind && with == o.with && a == o.a && b == o.b; }
};

// What spec.transform asks for, encoded (native/lib builds it from the API's encodeOps()).
struct TransformSpec {
  bool mirror = false;   // applied to every mirror leg
  bool primary = false;  // applied to the bytes sent to the app
  std::vector<TransformOp> ops;
  std::string programElf;      // a user-supplied BPF object; empty: none
  std::string programSection;  // its sk_msg program's section; empty: the first sk_msg program
  std::string programName;     // where it came from, for messages
  // How long bytes held back for a possibly split pattern wait for the client's next bytes (then they
  // are released as no match). A mirror also releases them once the app has answered the turn.
  uint32_t holdMs = 20;
  bool operator==(const TransformSpec& o) const {
    return mirror == o.mirror && primary == o.primary && ops == o.ops && programElf == o.programElf &&
           programSection == o.programSection && holdMs == o.holdMs;
  }
};

struct TransformError {
  std::string code;     // ProgramRejected, TransformUnsupported, TransformInvalid, TransformFailed
  std::string message;  // one line
  std::string log;      // the verifier's output, verbatim (may be empty)
};

class TransformRuntime;

// One loaded profile: the ops (and user program) a connection keeps for its life. Freed (its slot in
// the profiles map reused) when the last connection that uses it ends.
struct TransformProfile {
  std::shared_ptr<TransformRuntime> runtime;
  uint32_t index = 0;
  uint32_t maxSend = 0;  // bytes per send, so that every hold and growth fits the program's message bound
  bool mirror = false, primary = false;
  uint32_t holdMs = 20;
  ~TransformProfile();
};

class TransformRuntime : public std::enable_shared_from_this<TransformRuntime> {
 public:
  // Loads the program and its maps and attaches the verdict to the hash.
  static std::shared_ptr<TransformRuntime> Create(TransformError* error);
  ~TransformRuntime();

  // Validates and loads `spec` as a new profile (and its user program); nullptr with *error set.
  std::shared_ptr<const TransformProfile> AddProfile(const TransformSpec& spec, TransformError* error);
  // Puts `fd` into the hash with fresh state for `profile`; false (errno set) when it could not.
  bool Attach(int fd, const TransformProfile& profile, uint32_t* slot);
  void Release(uint32_t slot);
  volatile xf_ledger* Ledger(uint32_t slot) const;

 private:
  friend struct TransformProfile;
  TransformRuntime() = default;
  void FreeProfile(uint32_t index);

  transform_bpf* skel_ = nullptr;
  int sockets_ = -1, conns_ = -1, profiles_ = -1, ops_ = -1, words_ = -1, user_ = -1;
  void* ledger_ = nullptr;
  size_t ledgerBytes_ = 0;
  std::mutex mu_;
  std::vector<uint32_t> freeSlots_;
  std::vector<bool> profileUsed_;
  std::vector<int> userProgFds_;  // per profile index
};

// A sink socket with a transform: the engine's side of the contract above.
class TransformedSocket {
 public:
  // SO_SNDBUF of a transformed upstream socket (the kernel doubles it).
  static constexpr uint32_t kSendBuffer = 1u << 20;
  TransformedSocket() = default;
  ~TransformedSocket() { Release(); }
  TransformedSocket(const TransformedSocket&) = delete;
  TransformedSocket& operator=(const TransformedSocket&) = delete;

  bool Attach(std::shared_ptr<const TransformProfile> profile, int fd);
  bool attached() const { return profile_ != nullptr; }
  uint32_t holdMs() const { return profile_ ? profile_->holdMs : 0; }
  // How many of `want` bytes may be sent now: 0 when the send buffer has no room (retry later).
  size_t Limit(size_t want) const;
  // After a send of n bytes: false when the program did not examine exactly what the kernel took, or
  // failed (the leg must then be closed with a reset).
  bool Sent(size_t n);
  bool failed() const;
  uint32_t failure() const;
  // Bytes the ops hold back (a possible pattern start at the end of the last send).
  uint32_t held() const;
  // Releases what is held: 1 done, 0 no room (retry), -1 failed.
  int Flush();
  void Release();

 private:
  std::shared_ptr<const TransformProfile> profile_;
  int fd_ = -1;
  uint32_t slot_ = 0;
  uint64_t sent_ = 0;  // bytes the kernel took, trigger bytes included
};

}  // namespace engine
}  // namespace kstreams
