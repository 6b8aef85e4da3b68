// Interception: the sk_lookup program that steers a pod's new connections for one port to the engine's
// listener (bpf/sk_lookup.bpf.c), and its loader. Plain C++ with no N-API, so it can be driven from
// elsewhere in the addon; interception_binding.cc is the JS face.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct sk_lookup_bpf;
struct bpf_link;

namespace kstreams {

struct InterceptionOptions {
  // Empty: the namespace of the calling thread.
  std::string netnsPath;
  uint16_t port = 0;
  int listenerFd = -1;
  // Sources whose lookups are left alone, at most one per family; addresses in network byte order.
  bool bypassV4 = false;
  uint32_t bypassV4Address = 0;
  bool bypassV6 = false;
  std::array<uint32_t, 4> bypassV6Address{};
};

// Why an attach failed: enough for a Node-style error (code, errno, syscall) and a message that says
// what happened, to what, and what to do next.
struct InterceptionFailure {
  std::string code;  // errno name (EPERM, ENOENT, ...) or EKSTREAMS_*
  int err = 0;       // errno, 0 when the failure is ours rather than the kernel's
  std::string syscall;
  std::string message;
};

struct InterceptionCounters {
  uint64_t steered = 0;
  uint64_t bypassed = 0;
  uint64_t noListener = 0;
  uint64_t assignFailed = 0;
};

class InterceptionLink {
 public:
  // Loads and attaches; on failure returns null with *failure filled and nothing left behind.
  static std::unique_ptr<InterceptionLink> Attach(const InterceptionOptions& options, InterceptionFailure* failure);
  ~InterceptionLink();
  InterceptionLink(const InterceptionLink&) = delete;
  InterceptionLink& operator=(const InterceptionLink&) = delete;

  // Closes link, program and map fds. Idempotent. The kernel detaches when the last fd goes, which is
  // also what happens when the process dies: the link is never pinned.
  void Detach();
  bool attached() const { return skel_ != nullptr; }

  // Sums the per-CPU counters. Returns 0 or a negative errno.
  int ReadCounters(InterceptionCounters* out) const;

  uint32_t linkId() const { return linkId_; }
  uint32_t programId() const { return programId_; }
  const std::vector<uint32_t>& mapIds() const { return mapIds_; }

 private:
  InterceptionLink() = default;
  struct sk_lookup_bpf* skel_ = nullptr;
  uint32_t linkId_ = 0;
  uint32_t programId_ = 0;
  std::vector<uint32_t> mapIds_;
};

// What the kernel offers for interception. Each *Error is 0 when the probe could run, else a positive errno;
// EPERM/EACCES mean the process lacks the privilege to find out (the feature may well be there).
struct KernelProbe {
  bool bpfSyscall = false;
  int bpfSyscallError = 0;
  bool btf = false;
  bool skLookup = false;
  int skLookupError = 0;
  bool sockmap = false;
  int sockmapError = 0;
};
KernelProbe ProbeKernel();

// libbpf logs through one process-wide callback. While a LibbpfLogCapture lives on a thread, what libbpf
// logs on that thread (warnings and info, i.e. verifier logs and reasons for failures) is collected so it
// can go into the error; otherwise warnings go to stderr and debug output is dropped.
class LibbpfLogCapture {
 public:
  LibbpfLogCapture();
  ~LibbpfLogCapture();
  const std::string& text() const { return text_; }
  void Append(const char* data, size_t size);

 private:
  std::string text_;
  LibbpfLogCapture* previous_;
};
// Installs the callback above; called once when the addon loads.
void InstallLibbpfLogger();

}  // namespace kstreams
