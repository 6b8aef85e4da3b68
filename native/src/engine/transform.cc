#include "transform.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <linux/sock_diag.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "../../bpf/transform.h"
#include "../interception.h"  // LibbpfLogCapture
#include "transform.skel.h"

namespace kstreams {
namespace engine {

namespace {

// Room a send leaves in the send buffer for the skb heads the kernel adds to the bytes: a head per
// 64 KiB skb at most, and a fixed margin.
constexpr int64_t kSendSlack = 4 << 10;
// A user program larger than this is refused before libbpf sees it (a ConfigMap holds 1 MiB).
constexpr size_t kMaxProgramBytes = 1u << 20;

void SetError(TransformError* e, const char* code, std::string message, std::string log = {}) {
  e->code = code;
  e->message = std::move(message);
  e->log = std::move(log);
}

std::string Errno(int err) {
  const char* name = strerrorname_np(err);
  return std::string(strerror(err)) + " (" + (name ? name : "EUNKNOWN") + ")";
}

// The verifier says why in the last lines of its log, before its statistics: what the one-line message
// shows (the whole log goes along verbatim).
std::string VerifierReason(const std::string& log) {
  size_t stop = log.rfind("-- END PROG LOAD LOG --");
  std::string body = log.substr(0, stop == std::string::npos ? log.size() : stop);
  size_t begin = body.rfind("-- BEGIN PROG LOAD LOG --");
  if (begin != std::string::npos) body = body.substr(begin + strlen("-- BEGIN PROG LOAD LOG --"));
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t nl = body.find('\n', pos);
    if (nl == std::string::npos) nl = body.size();
    std::string line = body.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.empty() || line.rfind("processed ", 0) == 0 || line.rfind("verification time", 0) == 0 ||
        line.rfind("stack depth", 0) == 0)
      continue;
    lines.push_back(line);
  }
  std::string out;
  for (size_t i = lines.size() >= 2 ? lines.size() - 2 : 0; i < lines.size(); i++) out += (out.empty() ? "" : "; ") + lines[i];
  return out;
}

const char* ProgTypeName(enum bpf_prog_type t) {
  const char* n = libbpf_bpf_prog_type_str(t);
  return n ? n : "unknown";
}

}  // namespace

TransformProfile::~TransformProfile() {
  if (runtime) runtime->FreeProfile(index);
}

std::shared_ptr<TransformRuntime> TransformRuntime::Create(TransformError* error) {
  std::shared_ptr<TransformRuntime> rt(new TransformRuntime());
  LibbpfLogCapture capture;
  rt->skel_ = transform_bpf__open_and_load();
  if (!rt->skel_) {
    int err = errno;
    std::string log = capture.text();
    std::string hint;
    // The program is written to verify with CAP_BPF + CAP_NET_ADMIN alone (ADR 0007); a verifier that
    // still holds it to the !root rules is one whose checks differ from those of the kernels it was
    // verified on, and CAP_PERFMON lifts those rules.
    if (log.find("!root") != std::string::npos)
      hint = " (this kernel's verifier refuses it without CAP_PERFMON, which the sidecar does not have)";
    else if (err == EPERM)
      hint = " (the sidecar needs CAP_BPF and CAP_NET_ADMIN)";
    else
      hint = " (the kernel lacks sk_msg on SOCKHASH, bpf_loop or sk_storage: 5.17 or later)";
    SetError(error, "TransformUnsupported", "loading the transform program failed: " + Errno(err) + hint, log);
    return nullptr;
  }
  rt->sockets_ = bpf_map__fd(rt->skel_->maps.xf_sockets);
  rt->conns_ = bpf_map__fd(rt->skel_->maps.xf_conns);
  rt->profiles_ = bpf_map__fd(rt->skel_->maps.xf_profiles);
  rt->ops_ = bpf_map__fd(rt->skel_->maps.xf_ops);
  rt->words_ = bpf_map__fd(rt->skel_->maps.xf_words);
  rt->user_ = bpf_map__fd(rt->skel_->maps.xf_user);
  int prog = bpf_program__fd(rt->skel_->progs.xf_verdict);
  if (bpf_prog_attach(prog, rt->sockets_, BPF_SK_MSG_VERDICT, 0) != 0) {
    SetError(error, "TransformUnsupported", "attaching the sk_msg verdict to its SOCKHASH failed: " + Errno(errno));
    return nullptr;
  }
  long page = sysconf(_SC_PAGESIZE);
  rt->ledgerBytes_ = (sizeof(xf_ledger) * XF_MAX_SLOTS + size_t(page) - 1) / size_t(page) * size_t(page);
  void* m = mmap(nullptr, rt->ledgerBytes_, PROT_READ | PROT_WRITE, MAP_SHARED,
                 bpf_map__fd(rt->skel_->maps.xf_ledger), 0);
  if (m == MAP_FAILED) {
    rt->ledger_ = nullptr;
    SetError(error, "TransformUnsupported", "mapping the transform ledger failed: " + Errno(errno));
    return nullptr;
  }
  rt->ledger_ = m;
  for (uint32_t s = XF_MAX_SLOTS; s > 0; s--) rt->freeSlots_.push_back(s - 1);
  rt->profileUsed_.assign(XF_MAX_PROFILES, false);
  rt->userProgFds_.assign(XF_MAX_PROFILES, -1);
  return rt;
}

TransformRuntime::~TransformRuntime() {
  if (ledger_) munmap(ledger_, ledgerBytes_);
  for (int& fd : userProgFds_)
    if (fd >= 0) close(fd);
  // Destroying the skeleton closes the maps and the program: the hash (and the verdict attached to it)
  // goes with its last reference; sockets still in it just leave it.
  if (skel_) transform_bpf__destroy(skel_);
}

volatile xf_ledger* TransformRuntime::Ledger(uint32_t slot) const {
  return reinterpret_cast<volatile xf_ledger*>(static_cast<char*>(ledger_) + size_t(slot) * sizeof(xf_ledger));
}

namespace {

// Loads the user's object and returns its sk_msg program's fd (dup'ed; the object is closed), or -1.
int LoadUserProgram(const TransformSpec& spec, TransformError* error) {
  const std::string& elf = spec.programElf;
  const std::string where = spec.programName.empty() ? "the program" : spec.programName;
  if (elf.size() > kMaxProgramBytes) {
    SetError(error, "ProgramRejected",
             where + " is " + std::to_string(elf.size()) + " bytes: a BPF object may have at most " +
                 std::to_string(kMaxProgramBytes) + " bytes");
    return -1;
  }
  if (elf.size() < 4 || memcmp(elf.data(), "\x7f" "ELF", 4) != 0) {
    SetError(error, "ProgramRejected", where + " is not an ELF object (compile it with clang -target bpf -c)");
    return -1;
  }
  LibbpfLogCapture capture;
  LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = "kstreams_user");
  bpf_object* obj = bpf_object__open_mem(elf.data(), elf.size(), &opts);
  if (!obj) {
    int err = errno;
    SetError(error, "ProgramRejected", where + ": libbpf cannot open the object: " + Errno(err),
             capture.text());
    return -1;
  }
  bpf_program* chosen = nullptr;
  std::string sections;
  bpf_program* p;
  bpf_object__for_each_program(p, obj) {
    const char* sec = bpf_program__section_name(p);
    if (!sections.empty()) sections += ", ";
    sections += std::string(sec) + " (" + ProgTypeName(bpf_program__type(p)) + ")";
    if (chosen) continue;
    if (!spec.programSection.empty() ? spec.programSection == sec : bpf_program__type(p) == BPF_PROG_TYPE_SK_MSG)
      chosen = p;
  }
  if (!chosen) {
    std::string msg = spec.programSection.empty()
                          ? where + " has no sk_msg program (put it in SEC(\"sk_msg\"))"
                          : where + " has no section \"" + spec.programSection + "\"";
    SetError(error, "ProgramRejected", msg + "; its programs: " + (sections.empty() ? "none" : sections));
    bpf_object__close(obj);
    return -1;
  }
  if (bpf_program__type(chosen) != BPF_PROG_TYPE_SK_MSG) {
    SetError(error, "ProgramRejected",
             where + ": section \"" + bpf_program__section_name(chosen) + "\" is a " +
                 ProgTypeName(bpf_program__type(chosen)) + " program; a transform must be sk_msg (SEC(\"sk_msg\"))");
    bpf_object__close(obj);
    return -1;
  }
  bpf_object__for_each_program(p, obj) bpf_program__set_autoload(p, p == chosen);
  bpf_program__set_expected_attach_type(chosen, BPF_SK_MSG_VERDICT);
  if (bpf_object__load(obj) != 0) {
    int err = errno;
    std::string log = capture.text();
    std::string tail = VerifierReason(log);
    SetError(error, "ProgramRejected",
             where + " was rejected by the kernel's verifier: " + Errno(err) + (tail.empty() ? "" : ": " + tail), log);
    bpf_object__close(obj);
    return -1;
  }
  int fd = dup(bpf_program__fd(chosen));
  bpf_object__close(obj);
  if (fd < 0) SetError(error, "TransformFailed", "dup of the program fd failed: " + Errno(errno));
  return fd;
}

}  // namespace

std::shared_ptr<const TransformProfile> TransformRuntime::AddProfile(const TransformSpec& spec, TransformError* error) {
  // Validate what the API already checked: a loader is the last line.
  if (spec.ops.size() > XF_MAX_OPS) {
    SetError(error, "TransformInvalid", "spec.transform.ops: at most " + std::to_string(XF_MAX_OPS) + " ops");
    return nullptr;
  }
  std::vector<xf_op> ops(spec.ops.size());
  double growth = 1;
  uint32_t holders = 0;
  for (size_t i = 0; i < spec.ops.size(); i++) {
    const TransformOp& in = spec.ops[i];
    xf_op& o = ops[i];
    memset(&o, 0, sizeof o);
    uint8_t in_with = in.with;
    std::string field = "spec.transform.ops[" + std::to_string(i) + "]";
    o.kind = in.kind;
    if (in.kind == XF_BYTEMAP) {
      if (in.a.size() != 256) {
        SetError(error, "TransformInvalid", field + ".byteMap: the table must have 256 entries");
        return nullptr;
      }
      // The ASCII case tables run as word arithmetic in the program.
      bool upper = true, lower = true;
      for (int b = 0; b < 256; b++) {
        uint8_t t = uint8_t(in.a[size_t(b)]);
        upper = upper && t == ((b >= 'a' && b <= 'z') ? b - 32 : b);
        lower = lower && t == ((b >= 'A' && b <= 'Z') ? b + 32 : b);
      }
      in_with = upper ? XF_ASCII_UPPER : lower ? XF_ASCII_LOWER : XF_TABLE;
    } else if (in.kind == XF_MASK || in.kind == XF_REPLACE) {
      if (in.a.empty() || in.a.size() > XF_MAX_PATTERN || in.b.size() > XF_MAX_PATTERN ||
          (in.kind == XF_MASK && in.b.empty())) {
        SetError(error, "TransformInvalid", field + ": patterns must have 1 to 256 bytes");
        return nullptr;
      }
      if (in.kind == XF_REPLACE && in.b.size() > in.a.size()) growth *= double(in.b.size()) / double(in.a.size());
      holders++;
    } else {
      SetError(error, "TransformInvalid", field + ": unknown op");
      return nullptr;
    }
    o.with = in_with;
    memcpy(o.a, in.a.data(), std::min<size_t>(in.a.size(), XF_QUICK));
    memcpy(o.b, in.b.data(), std::min<size_t>(in.b.size(), XF_QUICK));
    o.a_len = uint16_t(in.kind == XF_BYTEMAP ? 256 : in.a.size());
    o.b_len = uint16_t(in.b.size());
  }
  // Every send must stay within the program's message bound with all holds pushed back and every
  // replacement grown: a send of maxSend bytes cannot exceed it.
  double room = double(XF_MAX_MSG) - double(holders) * XF_MAX_PATTERN - 1;
  // Growth compounds on held bytes too: keep half. Without growth the bound is exact: sends of
  // XF_MAX_SEND (32 KiB, the size of the page fragments tcp_bpf_sendmsg copies a send into) then fill
  // one fragment each, and the program's first pull finds the message in one piece instead of copying it.
  double maxSend = growth > 1 ? std::floor(room / growth / 2) : room;
  if (maxSend < 64) {
    SetError(error, "TransformInvalid",
             "spec.transform.ops: the replacements grow the stream too much (x" + std::to_string(int(growth)) +
                 "): a send would outgrow what the kernel program can walk; use fewer or shorter length-increasing replaces");
    return nullptr;
  }
  int userFd = -1;
  if (!spec.programElf.empty()) {
    userFd = LoadUserProgram(spec, error);
    if (userFd < 0) return nullptr;
  }

  std::lock_guard<std::mutex> lock(mu_);
  uint32_t index = XF_MAX_PROFILES;
  for (uint32_t i = 0; i < XF_MAX_PROFILES; i++)
    if (!profileUsed_[i]) {
      index = i;
      break;
    }
  if (index == XF_MAX_PROFILES) {
    if (userFd >= 0) close(userFd);
    SetError(error, "TransformFailed",
             "too many transform versions in use at once (" + std::to_string(XF_MAX_PROFILES) +
                 "): connections opened under older edits still run");
    return nullptr;
  }
  // The ops, then every pattern byte (and byteMap table) as words, then the profile that points at them.
  std::vector<uint32_t> keys, wordKeys;
  std::vector<uint64_t> words;
  for (size_t i = 0; i < ops.size(); i++) {
    uint32_t opKey = XF_OP_KEY(index, uint32_t(i));
    keys.push_back(opKey);
    const std::string* patterns[2] = {&spec.ops[i].a, &spec.ops[i].b};
    for (uint32_t which = 0; which < 2; which++) {
      uint64_t w[XF_PATTERN_WORDS] = {};
      memcpy(w, patterns[which]->data(), std::min<size_t>(patterns[which]->size(), XF_MAX_PATTERN));
      for (uint32_t k = 0; k < XF_PATTERN_WORDS; k++) {
        wordKeys.push_back(XF_WORD_KEY(opKey, which, k));
        words.push_back(w[k]);
      }
    }
  }
  xf_profile value = {};
  value.nops = uint32_t(ops.size());
  value.user_program = userFd >= 0 ? 1 : 0;
  uint32_t nops = uint32_t(ops.size()), nwords = uint32_t(words.size());
  if ((nops && bpf_map_update_batch(ops_, keys.data(), ops.data(), &nops, nullptr) != 0) ||
      (nwords && bpf_map_update_batch(words_, wordKeys.data(), words.data(), &nwords, nullptr) != 0) ||
      bpf_map_update_elem(profiles_, &index, &value, BPF_ANY) != 0) {
    int err = errno;
    if (userFd >= 0) close(userFd);
    SetError(error, "TransformFailed", "writing the transform profile failed: " + Errno(err));
    return nullptr;
  }
  if (userFd >= 0) {
    if (bpf_map_update_elem(user_, &index, &userFd, BPF_ANY) != 0) {
      int err = errno;
      close(userFd);
      SetError(error, "ProgramRejected",
               (spec.programName.empty() ? std::string("the program") : spec.programName) +
                   " cannot run after the built-in ops (tail call refused: " + Errno(err) + ")");
      return nullptr;
    }
    userProgFds_[index] = userFd;
  }
  profileUsed_[index] = true;
  auto prof = std::make_shared<TransformProfile>();
  prof->runtime = shared_from_this();
  prof->index = index;
  prof->maxSend = uint32_t(std::min<double>(maxSend, XF_MAX_SEND));
  prof->mirror = spec.mirror;
  prof->primary = spec.primary;
  prof->holdMs = spec.holdMs;
  return prof;
}

void TransformRuntime::FreeProfile(uint32_t index) {
  std::lock_guard<std::mutex> lock(mu_);
  if (index >= XF_MAX_PROFILES || !profileUsed_[index]) return;
  if (userProgFds_[index] >= 0) {
    bpf_map_delete_elem(user_, &index);
    close(userProgFds_[index]);
    userProgFds_[index] = -1;
  }
  profileUsed_[index] = false;
}

bool TransformRuntime::Attach(int fd, const TransformProfile& profile, uint32_t* slot) {
  uint32_t s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (freeSlots_.empty()) {
      errno = ENOSPC;
      return false;
    }
    s = freeSlots_.back();
    freeSlots_.pop_back();
  }
  volatile xf_ledger* l = Ledger(s);
  l->consumed = 0;
  l->emitted = 0;
  l->flush = 0;
  l->held = 0;
  l->failed = 0;
  l->runs = 0;
  // Per-socket state first: a socket in the hash without it has every send dropped.
  static thread_local std::unique_ptr<xf_conn> conn(new xf_conn);
  memset(conn.get(), 0, sizeof *conn);
  conn->profile = profile.index;
  conn->slot = s;
  if (bpf_map_update_elem(conns_, &fd, conn.get(), BPF_ANY) != 0) {
    int err = errno;
    Release(s);
    errno = err;
    return false;
  }
  uint64_t v = uint64_t(fd);
  if (bpf_map_update_elem(sockets_, &s, &v, BPF_ANY) != 0) {
    int err = errno;
    Release(s);
    errno = err;
    return false;
  }
  *slot = s;
  return true;
}

void TransformRuntime::Release(uint32_t slot) {
  // A closed socket has left the hash by itself; deleting first keeps a reused slot's key free.
  bpf_map_delete_elem(sockets_, &slot);
  std::lock_guard<std::mutex> lock(mu_);
  freeSlots_.push_back(slot);
}

// ---- TransformedSocket ----

bool TransformedSocket::Attach(std::shared_ptr<const TransformProfile> profile, int fd) {
  Release();
  if (!profile || !profile->runtime) return false;
  uint32_t slot;
  if (!profile->runtime->Attach(fd, *profile, &slot)) return false;
  profile_ = std::move(profile);
  fd_ = fd;
  slot_ = slot;
  sent_ = 0;
  return true;
}

void TransformedSocket::Release() {
  if (!profile_) return;
  profile_->runtime->Release(slot_);
  profile_.reset();
  fd_ = -1;
}

size_t TransformedSocket::Limit(size_t want) const {
  if (!profile_) return want;
  uint32_t mem[SK_MEMINFO_VARS] = {};
  socklen_t len = sizeof mem;
  if (getsockopt(fd_, SOL_SOCKET, SO_MEMINFO, mem, &len) != 0) return 0;
  int64_t room = int64_t(mem[SK_MEMINFO_SNDBUF]) - int64_t(mem[SK_MEMINFO_WMEM_QUEUED]) - kSendSlack;
  if (room <= 0) return 0;
  size_t n = std::min<size_t>({want, size_t(room), size_t(profile_->maxSend)});
  // The heads of the skbs this send may start (one per 16 KiB: the sk_msg ring's entries are pushed
  // one by one) must fit too.
  int64_t heads = int64_t(n / (16 << 10) + 1) * 1024;
  if (int64_t(n) + heads > room) n = room > heads ? size_t(room - heads) : 0;
  return n;
}

bool TransformedSocket::Sent(size_t n) {
  if (!profile_) return true;
  sent_ += n;
  volatile xf_ledger* l = profile_->runtime->Ledger(slot_);
  return l->failed == 0 && l->consumed == sent_;
}

bool TransformedSocket::failed() const {
  return profile_ && profile_->runtime->Ledger(slot_)->failed != 0;
}

uint32_t TransformedSocket::failure() const { return profile_ ? profile_->runtime->Ledger(slot_)->failed : 0; }

uint32_t TransformedSocket::held() const { return profile_ ? profile_->runtime->Ledger(slot_)->held : 0; }

int TransformedSocket::Flush() {
  if (!profile_ || held() == 0) return 1;
  if (Limit(1) == 0) return 0;
  volatile xf_ledger* l = profile_->runtime->Ledger(slot_);
  l->flush = 1;
  const char trigger = 0;
  ssize_t n = send(fd_, &trigger, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n == 1) return Sent(1) ? 1 : -1;
  int err = errno;
  l->flush = 0;  // the program did not take the trigger
  if (err == EAGAIN || err == EINTR) return 0;
  return -1;
}

}  // namespace engine
}  // namespace kstreams
