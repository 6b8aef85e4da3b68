// The capture flusher (flusher.h). Why it works the way it does:
//  - Writeback is started with sync_file_range(SYNC_FILE_RANGE_WRITE) on each whole kChunk a file grew
//    by: it queues the pages for I/O without waiting for it, so dirty pages never pile up to the
//    kernel's dirty limits (where balance_dirty_pages would stall the writer itself).
//  - Pages more than kBehind behind the write offset are waited for (WAIT_BEFORE | WRITE | WAIT_AFTER:
//    their writeback, started a while ago, is usually done) and dropped with POSIX_FADV_DONTNEED, which
//    only drops clean pages. kBehind leaves the writeback of the chunks between time to finish.
//  - At a file's end the rest is written back and dropped whole (length 0: to the end of the file, the
//    last partial page included).
//  - The writer publishes `written` before it queues the file, and the flusher clears `queued` before it
//    reads `written`: a file that grows while the flusher works on it is queued again, never missed.
//    `ended` is read before `written`: once it is seen, `written` is the file's final length.
//  - Errors are not the flusher's to report: the bytes are in the page cache either way (a write error
//    at writeback is the kernel's to keep, as for any file nobody fsyncs); a range that failed is not
//    counted written back.
#include "flusher.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>

#include "sockets.h"

namespace kstreams {
namespace engine {

CaptureFile::~CaptureFile() {
  int f = fd;
  CloseFd(f);
}

void CaptureFlusher::Wrote(const std::shared_ptr<CaptureFile>& f, uint64_t written) {
  f->written.store(written, std::memory_order_seq_cst);
  if (written < f->nextKick) return;
  f->nextKick = (written / kChunk + 1) * kChunk;
  Enqueue(f, false);
}

void CaptureFlusher::Ended(const std::shared_ptr<CaptureFile>& f) {
  f->ended.store(true, std::memory_order_seq_cst);
  Enqueue(f, true);
}

void CaptureFlusher::Enqueue(const std::shared_ptr<CaptureFile>& f, bool always) {
  if (f->queued.exchange(true, std::memory_order_seq_cst)) return;  // the flusher will see the news
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || (!always && queue_.size() >= kMaxQueue)) {
      f->queued.store(false, std::memory_order_seq_cst);
      return;
    }
    queue_.push_back(f);
  }
  cv_.notify_one();
}

void CaptureFlusher::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_ || thread_.joinable()) return;
  thread_ = std::thread([this] { Run(); });
  // Named for top -H / ps -L and perf.
  pthread_setname_np(thread_.native_handle(), "ks-cap-flush");
}

void CaptureFlusher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::deque<std::shared_ptr<CaptureFile>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(queue_);
  }
  // Closes the files no one else holds.
}

void CaptureFlusher::Run() {
  for (;;) {
    std::shared_ptr<CaptureFile> f;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      f = std::move(queue_.front());
      queue_.pop_front();
    }
    f->queued.store(false, std::memory_order_seq_cst);
    Flush(*f);
    // Dropping f here closes the file when the writer is done with it.
  }
}

void CaptureFlusher::Flush(CaptureFile& f) {
  bool ended = f.ended.load(std::memory_order_seq_cst);
  uint64_t written = f.written.load(std::memory_order_seq_cst);
  uint64_t startTo = ended ? written : written / kChunk * kChunk;
  if (startTo > f.started) {
    if (sync_file_range(f.fd, off64_t(f.started), off64_t(startTo - f.started), SYNC_FILE_RANGE_WRITE) == 0) f.started = startTo;
  }
  uint64_t dropTo = ended ? written : std::min(f.started, written > kBehind ? (written - kBehind) / kChunk * kChunk : 0);
  if (dropTo <= f.dropped) return;
  // At the end, length 0: to the end of the file (fadvise keeps a last partial page otherwise).
  off64_t len = ended ? 0 : off64_t(dropTo - f.dropped);
  constexpr unsigned kWait = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
  if (sync_file_range(f.fd, off64_t(f.dropped), len, kWait) != 0) return;
  if (posix_fadvise(f.fd, off_t(f.dropped), off_t(len), POSIX_FADV_DONTNEED) != 0) return;
  f.counters->capture.bytesWrittenBack.fetch_add(dropTo - f.dropped, std::memory_order_relaxed);
  f.dropped = dropTo;
}

}  // namespace engine
}  // namespace kstreams
