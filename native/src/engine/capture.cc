// The capture session and its writer thread (capture.h; the format is docs/capture.md). Why it works
// the way it does:
//  - The writer handles one queue of ops in the order the workers posted them, so a connection's index
//    only names offsets whose bytes are already in its data files: a capture cut short by SIGKILL still
//    reads (its last record is the last one whose bytes were written).
//  - Data files are opened without O_APPEND (splice() refuses O_APPEND files with EINVAL) and written
//    with splice() from the capture pipes: the file offset advances, stream bytes never reach user space.
//  - The index is appended with write(), one whole line per call; a line the disk could not take whole
//    is cut off again (ftruncate to the last whole line), so the index is always whole lines.
//  - Every splice tells the engine's flusher (flusher.h) how long the file is now, and a connection's end
//    tells it the file is complete; the flusher writes back and drops the pages behind. That is all the
//    writer does for it: it never waits on the flusher.
//  - A failed write (ENOSPC, EDQUOT, EIO) marks the connection failed: the worker cuts it at its next
//    batch; its end record says `cut` with the bytes really in the files. A full disk also makes the
//    capture full: new connections are not recorded.
#include "capture.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>

#include "engine.h"
#include "pipes.h"
#include "sockets.h"

namespace kstreams {
namespace engine {

namespace {

std::string IsoNow(const timespec& ts) {
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char buf[64];
  snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
           tm.tm_hour, tm.tm_min, tm.tm_sec, long(ts.tv_nsec / 1000000));
  return buf;
}

// A string for JSON: the engine's own strings (paths, names) may hold any byte but a quote or a backslash
// would break the line; control bytes are escaped.
std::string Json(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += char(ch);
    } else if (ch < 0x20) {
      char buf[8];
      snprintf(buf, sizeof buf, "\\u%04x", ch);
      out += buf;
    } else {
      out += char(ch);
    }
  }
  return out + "\"";
}

std::string Ns(uint64_t ns) { return "\"" + std::to_string(ns) + "\""; }

bool MakeDirs(const std::string& path) {
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    cur = path.substr(0, j);
    if (!cur.empty() && mkdir(cur.c_str(), 0750) != 0 && errno != EEXIST) return false;
    i = j + 1;
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return false;
  if (!S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    return false;
  }
  return true;
}

std::string Sanitized(const std::string& s) {
  std::string out;
  for (char ch : s) out += (isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.') ? ch : '_';
  return out.empty() ? "host" : out;
}

bool WriteAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += size_t(n);
  }
  return true;
}

}  // namespace

uint64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

CaptureConn::~CaptureConn() {
  for (int* fd : {&c2sRd, &c2sWr, &s2cRd, &s2cWr, &c2sSock, &s2cSock, &idxFd}) CloseFd(*fd);
}

CaptureSession::CaptureSession(const CaptureSpec& spec, std::string target, std::shared_ptr<TargetCounters> counters,
                               std::shared_ptr<CaptureFlusher> flusher)
    : spec_(spec), target_(std::move(target)), counters_(std::move(counters)), flusher_(std::move(flusher)) {}

std::shared_ptr<CaptureSession> CaptureSession::Create(const CaptureSpec& spec, const std::string& target,
                                                       std::shared_ptr<TargetCounters> counters,
                                                       std::shared_ptr<CaptureFlusher> flusher, StartError* error) {
  std::shared_ptr<CaptureSession> s(new CaptureSession(spec, target, std::move(counters), std::move(flusher)));
  if (spec.dir.empty() || spec.dir[0] != '/') {
    *error = {EINVAL, "mkdir", "capture directory '" + spec.dir + "' (an absolute path is needed)"};
    return nullptr;
  }
  if (!MakeDirs(spec.dir)) {
    *error = {errno, "mkdir", "capture directory " + spec.dir};
    return nullptr;
  }
  timespec wall;
  clock_gettime(CLOCK_REALTIME, &wall);
  s->startedNs_ = MonotonicNs();
  s->startedAt_ = IsoNow(wall);
  struct tm tm;
  gmtime_r(&wall.tv_sec, &tm);
  char stamp[32];
  strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  std::string base = std::string(stamp) + "-" + Sanitized(host) + "-" + std::to_string(getpid());
  // Two file targets of one engine in one directory (or two updates within a second) get -2, -3, ...
  std::string dir = spec.dir;
  if (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  for (int n = 1;; n++) {
    std::string name = n == 1 ? base : base + "-" + std::to_string(n);
    std::string path = dir + "/" + name;
    if (mkdir(path.c_str(), 0750) == 0) {
      s->path_ = path;
      break;
    }
    if (errno != EEXIST || n >= 1000) {
      *error = {errno, "mkdir", "capture session directory " + path};
      return nullptr;
    }
  }
  s->conns_ = s->path_ + "/conns";
  if (mkdir(s->conns_.c_str(), 0750) != 0) {
    *error = {errno, "mkdir", "capture directory " + s->conns_};
    rmdir(s->path_.c_str());
    return nullptr;
  }
  return s;
}

CaptureSession::~CaptureSession() { Close(); }

void CaptureSession::Begin(const std::string& listen, const char* writer) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (begun_ || closed_) return;
    begun_ = true;
  }
  std::string name = path_.substr(path_.rfind('/') + 1);
  std::string json = "{\"format\":\"kstreams-capture\",\"version\":1,\"session\":" + Json(name) +
                     ",\"startedAt\":" + Json(startedAt_) + ",\"startedNs\":" + Ns(startedNs_) +
                     ",\"writer\":\"" + std::string(writer) + "\",\"responses\":" + (spec_.responses ? "true" : "false") +
                     ",\"maxBytes\":" + std::to_string(spec_.maxBytes) +
                     ",\"maxConnectionBytes\":" + std::to_string(spec_.maxConnectionBytes) +
                     ",\"target\":" + Json(target_) + ",\"listen\":" + Json(listen) + "}\n";
  std::string file = path_ + "/session.json";
  int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  // Without it no reader takes the capture: record nothing (a full capture) rather than files no one reads.
  if (fd < 0 || !WriteAll(fd, json)) {
    if (fd >= 0) unlink(file.c_str());
    full_.store(true, std::memory_order_relaxed);
  }
  CloseFd(fd);
  flusher_->Start();
  thread_ = std::thread([this] { Run(); });
  // Named for top -H / ps -L (and for the tests that starve it on purpose).
  pthread_setname_np(thread_.native_handle(), "ks-capture");
}

void CaptureSession::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Never begun (the engine failed to start): nothing was posted but open ops, which only hold fds.
  ops_.clear();
  CloseFd(passRd_);
  CloseFd(passWr_);
}

void CaptureSession::Discard() {
  Close();
  rmdir(conns_.c_str());
  rmdir(path_.c_str());
}

uint64_t CaptureSession::NextId() {
  if (full()) return 0;
  if (spec_.maxBytes && reserved_.load(std::memory_order_relaxed) >= spec_.maxBytes) return 0;
  return nextId_.fetch_add(1, std::memory_order_relaxed) + 1;
}

uint64_t CaptureSession::Reserve(uint64_t want) {
  if (!spec_.maxBytes) return want;
  uint64_t used = reserved_.load(std::memory_order_relaxed), give;
  do {
    give = used >= spec_.maxBytes ? 0 : std::min(want, spec_.maxBytes - used);
    if (give == 0) return 0;
  } while (!reserved_.compare_exchange_weak(used, used + give, std::memory_order_relaxed));
  return give;
}

void CaptureSession::Post(CaptureOp&& op) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake = ops_.empty();
    ops_.push_back(std::move(op));
  }
  if (wake) cv_.notify_one();
}

bool CaptureSession::MakePass() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return false;
  // As large as the kernel lets it be: the bytes of one splice from a lane's socket (the engine's pipe
  // size; a smaller pipe only means more splices).
  ResizePipe(fds[0], kPassPipe);
  passRd_ = fds[0];
  passWr_ = fds[1];
  return true;
}

void CaptureSession::Run() {
  MakePass();
  std::deque<CaptureOp> batch;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !ops_.empty(); });
      if (ops_.empty() && stopping_) return;
      batch.swap(ops_);
    }
    // Consecutive data ops of one connection and direction (the worker posts one per batch of P or R,
    // many of them when the writer was behind) go out in one splice: fewer syscalls and wake-ups for the
    // same bytes, in the same order.
    for (size_t i = 0; i < batch.size(); i++) {
      CaptureOp& op = batch[i];
      if (op.kind == CaptureOp::kC2s || op.kind == CaptureOp::kS2c) {
        while (i + 1 < batch.size() && batch[i + 1].kind == op.kind && batch[i + 1].conn == op.conn &&
               batch[i + 1].fromPipe == op.fromPipe)
          op.bytes += batch[++i].bytes;
      }
      Handle(op);
    }
    batch.clear();
  }
}

void CaptureSession::Fail(CaptureConn& c, int err) {
  c.failed.store(true, std::memory_order_relaxed);
  // The disk (or the quota) is full: connections after this one would fail the same way.
  if (err == ENOSPC || err == EDQUOT) full_.store(true, std::memory_order_relaxed);
}

bool CaptureSession::OpenFiles(CaptureConn& c) {
  char id[16];
  snprintf(id, sizeof id, "%09llu", static_cast<unsigned long long>(c.id));
  std::string base = conns_ + "/" + id;
  int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
  auto data = [&](const char* ext) {
    int fd = open((base + ext).c_str(), flags, 0640);
    return fd >= 0 ? std::make_shared<CaptureFile>(fd, counters_) : nullptr;
  };
  c.idxFd = open((base + ".idx").c_str(), flags, 0640);
  if (c.idxFd >= 0) c.c2sFile = data(".c2s");
  if (spec_.responses && c.c2sFile) c.s2cFile = data(".s2c");
  if (c.idxFd < 0 || !c.c2sFile || (spec_.responses && !c.s2cFile)) {
    Fail(c, errno);
    return false;
  }
  return true;
}

bool CaptureSession::AppendIndex(CaptureConn& c, const std::string& line) {
  if (c.idxFd < 0) return false;
  if (WriteAll(c.idxFd, line)) {
    c.idxLength += line.size();
    return true;
  }
  int err = errno;
  // Part of the line may be in the file: cut back to the last whole line, and write no more.
  (void)!ftruncate(c.idxFd, off_t(c.idxLength));
  lseek(c.idxFd, off_t(c.idxLength), SEEK_SET);
  CloseFd(c.idxFd);
  Fail(c, err);
  return false;
}

int64_t CaptureSession::SpliceToFile(CaptureConn& c, int from, const std::shared_ptr<CaptureFile>& file, uint64_t& written,
                                     uint64_t bytes) {
  uint64_t done = 0;
  while (done < bytes) {
    ssize_t n = splice(from, nullptr, file->fd, nullptr, size_t(bytes - done), SPLICE_F_MOVE);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return -1;
    }
    done += uint64_t(n);
    written += uint64_t(n);
    flusher_->Wrote(file, written);
  }
  return int64_t(done);
}

void CaptureSession::Write(CaptureConn& c, bool c2s, uint64_t bytes, bool fromPipe) {
  int from = fromPipe ? (c2s ? c.c2sRd : c.s2cRd) : (c2s ? c.c2sSock : c.s2cSock);
  const std::shared_ptr<CaptureFile>& file = c2s ? c.c2sFile : c.s2cFile;
  uint64_t& written = c2s ? c.c2sWritten : c.s2cWritten;
  while (bytes > 0 && !c.failed.load(std::memory_order_relaxed) && file) {
    uint64_t moved;
    if (fromPipe) {
      int64_t n = SpliceToFile(c, from, file, written, bytes);
      if (n < 0) {
        Fail(c, errno);
        break;
      }
      moved = uint64_t(n);
    } else {
      // The worker posted these bytes once they were in the socket: they are there, so a read that finds
      // none is a fault of ours, not a wait (counted lost like a failed write, never waited for).
      if (passRd_ < 0 && !MakePass()) {
        Fail(c, errno);
        break;
      }
      ssize_t got = splice(from, nullptr, passWr_, nullptr, size_t(std::min<uint64_t>(bytes, 1ull << 30)), SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        Fail(c, got < 0 ? errno : EIO);
        break;
      }
      uint64_t before = written;
      if (SpliceToFile(c, passRd_, file, written, uint64_t(got)) < 0) {
        int err = errno;
        // What the file did not take is dropped with the writer's pipe: it is empty for the next write.
        CloseFd(passRd_);
        CloseFd(passWr_);
        Fail(c, err);
        uint64_t kept = written - before;
        (c2s ? counters_->capture.bytesWritten : counters_->capture.responseBytes).fetch_add(kept, std::memory_order_relaxed);
        bytes -= kept;
        break;
      }
      moved = uint64_t(got);
    }
    bytes -= moved;
    (c2s ? counters_->capture.bytesWritten : counters_->capture.responseBytes).fetch_add(moved, std::memory_order_relaxed);
  }
  // Bytes posted but not written stay in the socket or the pipe until they are closed at the end: lost,
  // counted.
  if (bytes > 0 && c2s) counters_->capture.bytesLost.fetch_add(bytes, std::memory_order_relaxed);
}

void CaptureSession::Handle(CaptureOp& op) {
  CaptureConn& c = *op.conn;
  switch (op.kind) {
    case CaptureOp::kOpen:
      if (OpenFiles(c)) AppendIndex(c, "{\"r\":\"open\",\"ns\":" + Ns(op.ns) + op.text + "}\n");
      break;
    case CaptureOp::kC2s:
    case CaptureOp::kS2c:
      Write(c, op.kind == CaptureOp::kC2s, op.bytes, op.fromPipe);
      break;
    case CaptureOp::kTurn:
      if (!c.failed.load(std::memory_order_relaxed))
        AppendIndex(c, "{\"r\":\"turn\",\"ns\":" + Ns(op.ns) + ",\"n\":" + std::to_string(op.turn) +
                           ",\"c2s\":" + std::to_string(op.c2s) + ",\"s2c\":" + std::to_string(op.s2c) + "}\n");
      break;
    case CaptureOp::kEnd: {
      // A failed write makes it a cut whatever the primary did; the lengths are what the files hold. It
      // counts as a disk cut unless the worker had cut the capture already (full, slow): "disk" is the
      // worker's cut for a failed write, "fin"/"rst" a connection that ended before it saw the failure.
      bool failed = c.failed.load(std::memory_order_relaxed);
      if (op.text == "disk" || (failed && op.text != "cut")) counters_->capture.cutsDisk.fetch_add(1, std::memory_order_relaxed);
      std::string how = failed || op.text == "disk" ? "cut" : op.text;
      AppendIndex(c, "{\"r\":\"end\",\"ns\":" + Ns(op.ns) + ",\"how\":\"" + how + "\",\"c2s\":" +
                         std::to_string(c.c2sWritten) + ",\"s2c\":" + std::to_string(c.s2cWritten) + "}\n");
      counters_->capture.connectionsWritten.fetch_add(1, std::memory_order_relaxed);
      // Closes the pipes (and whatever a failed write left in them) and the index; the data files go to
      // the flusher, to write back and drop, and are closed by whichever lets go of them last.
      for (int* fd : {&c.c2sRd, &c.c2sWr, &c.s2cRd, &c.s2cWr, &c.c2sSock, &c.s2cSock, &c.idxFd}) CloseFd(*fd);
      for (std::shared_ptr<CaptureFile>* f : {&c.c2sFile, &c.s2cFile}) {
        if (*f) flusher_->Ended(*f);
        f->reset();
      }
      break;
    }
  }
}

}  // namespace engine
}  // namespace kstreams
