#include "interception.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../bpf/sk_lookup.h"
#include "sk_lookup.skel.h"

namespace kstreams {

// ---- libbpf log routing ----

static thread_local LibbpfLogCapture* activeCapture = nullptr;
// A verifier log can be megabytes; the end says why it failed, so that is what we keep.
static constexpr size_t kMaxCapturedLog = 16 * 1024;

static int LibbpfPrint(enum libbpf_print_level level, const char* format, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  if (!activeCapture) {
    if (level == LIBBPF_WARN) return vfprintf(stderr, format, args);
    return 0;
  }
  // One call can carry a whole verifier log, whose last lines say why: size the buffer to fit it.
  va_list again;
  va_copy(again, args);
  int n = vsnprintf(nullptr, 0, format, args);
  if (n > 0) {
    std::string buffer(static_cast<size_t>(n) + 1, '\0');
    vsnprintf(buffer.data(), buffer.size(), format, again);
    activeCapture->Append(buffer.data(), static_cast<size_t>(n));
  }
  va_end(again);
  return n;
}

void InstallLibbpfLogger() { libbpf_set_print(LibbpfPrint); }

LibbpfLogCapture::LibbpfLogCapture() : previous_(activeCapture) { activeCapture = this; }
LibbpfLogCapture::~LibbpfLogCapture() { activeCapture = previous_; }
void LibbpfLogCapture::Append(const char* data, size_t size) {
  text_.append(data, size);
  if (text_.size() > kMaxCapturedLog) text_.erase(0, text_.size() - kMaxCapturedLog);
}

// ---- attach ----

namespace {

std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name ? name : "EUNKNOWN";
}

void Fail(InterceptionFailure* f, int err, const char* syscall, const std::string& message) {
  f->err = err;
  f->code = ErrnoName(err);
  f->syscall = syscall;
  f->message = message + ": " + strerror(err) + " (" + f->code + ")";
}

void FailCoded(InterceptionFailure* f, const char* code, int err, const char* syscall, const std::string& message) {
  f->err = err;
  f->code = code;
  f->syscall = syscall;
  f->message = message;
}

// Why a BPF step failed for lack of privilege, said the way an operator can act on.
const char* kCapsHint = "; the sidecar needs CAP_BPF and CAP_NET_ADMIN (or root)";

std::string WithLog(const std::string& message, const LibbpfLogCapture& log) {
  if (log.text().empty()) return message;
  std::string text = log.text();
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return message + "\nlibbpf log:\n" + text;
}

// Closes an fd on every way out of Attach.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

bool CheckListener(int listenerFd, int netnsFd, const std::string& netnsName, InterceptionFailure* failure) {
  std::string what = "listener fd " + std::to_string(listenerFd);
  if (fcntl(listenerFd, F_GETFD) < 0) {
    Fail(failure, errno, "fcntl", what + " is not open; pass the engine's listenerFd");
    return false;
  }
  int accepting = 0, protocol = 0;
  socklen_t len = sizeof accepting;
  if (getsockopt(listenerFd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) < 0) {
    Fail(failure, errno, "getsockopt", what + " is not a socket; pass the engine's listenerFd");
    return false;
  }
  len = sizeof protocol;
  if (getsockopt(listenerFd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) < 0) {
    Fail(failure, errno, "getsockopt", what + ": cannot read its protocol");
    return false;
  }
  if (!accepting || protocol != IPPROTO_TCP) {
    FailCoded(failure, "EKSTREAMS_NOT_LISTENER", 0, "getsockopt",
              what + " is not a listening TCP socket (" + (protocol != IPPROTO_TCP ? "not TCP" : "not listening") +
                  "); pass the engine's listenerFd after it listens");
    return false;
  }
  // A listener of another namespace is assigned without complaint but never completes a handshake:
  // refuse it here rather than black-hole the app's port.
  Fd socketNs;
  socketNs.fd = ioctl(listenerFd, SIOCGSKNS);
  if (socketNs.fd < 0) {
    int err = errno;
    Fail(failure, err, "ioctl",
         what + ": cannot tell its network namespace (SIOCGSKNS)" + (err == EPERM ? kCapsHint : ""));
    return false;
  }
  struct stat a, b;
  if (fstat(socketNs.fd, &a) < 0 || fstat(netnsFd, &b) < 0) {
    Fail(failure, errno, "fstat", what + ": cannot compare network namespaces");
    return false;
  }
  if (a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
    FailCoded(failure, "EKSTREAMS_LISTENER_NETNS", 0, "ioctl",
              what + " lives in network namespace " + std::to_string(a.st_ino) + ", not in " + netnsName + " (" +
                  std::to_string(b.st_ino) +
                  "); create the listener inside the namespace being intercepted, or connections would hang");
    return false;
  }
  return true;
}

}  // namespace

std::unique_ptr<InterceptionLink> InterceptionLink::Attach(const InterceptionOptions& options,
                                                           InterceptionFailure* failure) {
  const std::string netnsName = options.netnsPath.empty() ? "/proc/thread-self/ns/net" : options.netnsPath;
  const std::string portName = "port " + std::to_string(options.port);

  Fd netns;
  netns.fd = open(netnsName.c_str(), O_RDONLY | O_CLOEXEC);
  if (netns.fd < 0) {
    int err = errno;
    if (err == ENOENT)
      Fail(failure, err, "open", "network namespace " + netnsName + " not found; is the pod (or its sandbox) still running?");
    else
      Fail(failure, err, "open", "cannot open network namespace " + netnsName);
    return nullptr;
  }
  int nsType = ioctl(netns.fd, NS_GET_NSTYPE);
  if (nsType != CLONE_NEWNET) {
    FailCoded(failure, "EKSTREAMS_NOT_NETNS", nsType < 0 ? errno : 0, "ioctl",
              netnsName + " is not a network namespace; pass /run/netns/NAME or /proc/PID/ns/net");
    return nullptr;
  }
  if (!CheckListener(options.listenerFd, netns.fd, netnsName, failure)) return nullptr;

  std::unique_ptr<InterceptionLink> self(new InterceptionLink());
  LibbpfLogCapture log;

  // From here on every failure leaves through self's destructor: one cleanup path.
  self->skel_ = sk_lookup_bpf__open();
  if (!self->skel_) {
    int err = errno;
    Fail(failure, err, "bpf", WithLog("opening the sk_lookup BPF object for " + portName + " failed", log));
    return nullptr;
  }
  auto* rodata = self->skel_->rodata;
  rodata->tapped_port = options.port;
  rodata->bypass_v4_enabled = options.bypassV4;
  rodata->bypass_v4 = options.bypassV4Address;
  rodata->bypass_v6_enabled = options.bypassV6;
  for (int i = 0; i < 4; i++) rodata->bypass_v6[i] = options.bypassV6Address[i];

  int rc = sk_lookup_bpf__load(self->skel_);
  if (rc) {
    int err = -rc;
    // EACCES here is the verifier rejecting the program; only EPERM is about privileges.
    if (err == EPERM)
      Fail(failure, err, "bpf", WithLog("loading the sk_lookup program for " + portName + " was refused" + kCapsHint, log));
    else
      FailCoded(failure, "EKSTREAMS_BPF_LOAD", err, "bpf",
                WithLog("loading the sk_lookup program for " + portName + " failed: " + strerror(err) +
                            " (" + ErrnoName(err) + "); does the kernel support sk_lookup (5.9+)?",
                        log));
    return nullptr;
  }

  uint32_t key = SK_LOOKUP_LISTENER_KEY;
  uint64_t value = static_cast<uint64_t>(options.listenerFd);
  if (bpf_map_update_elem(bpf_map__fd(self->skel_->maps.listener), &key, &value, BPF_ANY) < 0) {
    int err = errno;
    Fail(failure, err, "bpf",
         "putting listener fd " + std::to_string(options.listenerFd) + " into the listener SOCKMAP failed" +
             (err == EPERM ? kCapsHint : ""));
    return nullptr;
  }

  self->skel_->links.kstreams_steer = bpf_program__attach_netns(self->skel_->progs.kstreams_steer, netns.fd);
  if (!self->skel_->links.kstreams_steer) {
    int err = errno;
    Fail(failure, err, "bpf",
         WithLog("attaching the sk_lookup program for " + portName + " to " + netnsName + " failed" +
                     ((err == EPERM || err == EACCES) ? kCapsHint : ""),
                 log));
    return nullptr;
  }

  struct bpf_link_info linkInfo;
  memset(&linkInfo, 0, sizeof linkInfo);
  uint32_t len = sizeof linkInfo;
  if (bpf_obj_get_info_by_fd(bpf_link__fd(self->skel_->links.kstreams_steer), &linkInfo, &len) == 0) {
    self->linkId_ = linkInfo.id;
    self->programId_ = linkInfo.prog_id;
  }
  struct bpf_map* map;
  bpf_object__for_each_map(map, self->skel_->obj) {
    struct bpf_map_info mapInfo;
    memset(&mapInfo, 0, sizeof mapInfo);
    len = sizeof mapInfo;
    if (bpf_obj_get_info_by_fd(bpf_map__fd(map), &mapInfo, &len) == 0) self->mapIds_.push_back(mapInfo.id);
  }
  return self;
}

InterceptionLink::~InterceptionLink() { Detach(); }

void InterceptionLink::Detach() {
  // Destroying the skeleton destroys the link in skel_->links, then closes program and map fds.
  if (skel_) sk_lookup_bpf__destroy(skel_);
  skel_ = nullptr;
}

int InterceptionLink::ReadCounters(InterceptionCounters* out) const {
  if (!skel_) return -EBADF;
  int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return cpus < 0 ? cpus : -EINVAL;
  std::vector<uint64_t> values(static_cast<size_t>(cpus));
  uint64_t sums[SK_LOOKUP_COUNTERS] = {};
  int fd = bpf_map__fd(skel_->maps.counters);
  for (uint32_t slot = 0; slot < SK_LOOKUP_COUNTERS; slot++) {
    if (bpf_map_lookup_elem(fd, &slot, values.data()) < 0) return -errno;
    for (uint64_t v : values) sums[slot] += v;
  }
  out->steered = sums[SK_LOOKUP_STEERED];
  out->bypassed = sums[SK_LOOKUP_BYPASSED];
  out->noListener = sums[SK_LOOKUP_NO_LISTENER];
  out->assignFailed = sums[SK_LOOKUP_ASSIGN_FAILED];
  return 0;
}

// ---- feature probe ----

namespace {

// libbpf's probes answer 0, "not supported", also when the kernel refused for lack of privilege (no
// CAP_BPF / CAP_NET_ADMIN: EPERM). Redo the attempt to keep its errno, and report only a refusal, which
// means "cannot tell", not "absent".
int RefusalErrno(int err) { return err == EPERM || err == EACCES ? err : 0; }

int SkLookupRefusal() {
  bpf_insn insns[2] = {};
  insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K;  // r0 = SK_PASS
  insns[0].imm = 1;
  insns[1].code = BPF_JMP | BPF_EXIT;
  bpf_prog_load_opts opts{};
  opts.sz = sizeof opts;
  opts.expected_attach_type = BPF_SK_LOOKUP;
  int fd = bpf_prog_load(BPF_PROG_TYPE_SK_LOOKUP, nullptr, "GPL", insns, 2, &opts);
  if (fd >= 0) {
    close(fd);
    return 0;
  }
  return RefusalErrno(errno);
}

int SockmapRefusal() {
  int fd = bpf_map_create(BPF_MAP_TYPE_SOCKMAP, nullptr, sizeof(uint32_t), sizeof(uint32_t), 1, nullptr);
  if (fd >= 0) {
    close(fd);
    return 0;
  }
  return RefusalErrno(errno);
}

}  // namespace

KernelProbe ProbeKernel() {
  KernelProbe probe;
  LibbpfLogCapture quiet;  // probes fail by design on old kernels; their warnings are not news
  int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, nullptr, sizeof(uint32_t), sizeof(uint32_t), 1, nullptr);
  if (fd >= 0) {
    probe.bpfSyscall = true;
    close(fd);
  } else {
    probe.bpfSyscallError = fd < 0 ? -fd : EINVAL;
  }
  probe.btf = access("/sys/kernel/btf/vmlinux", R_OK) == 0;
  int rc = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_LOOKUP, nullptr);
  probe.skLookup = rc == 1;
  probe.skLookupError = rc < 0 ? -rc : rc == 0 ? SkLookupRefusal() : 0;
  rc = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_SOCKMAP, nullptr);
  probe.sockmap = rc == 1;
  probe.sockmapError = rc < 0 ? -rc : rc == 0 ? SockmapRefusal() : 0;
  return probe;
}

}  // namespace kstreams
