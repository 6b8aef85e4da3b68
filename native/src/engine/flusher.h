// The capture flusher: one thread per engine that keeps the page cache of the captures' data files
// bounded (docs/capture.md, "How the writer keeps the page cache bounded"). A capture writes at the
// stream's rate; left to the kernel, its pages stay dirty until the dirty limits push writeback, and
// clean pages stay cached until memory runs short, so the page cache grows with every byte recorded.
// On a VM whose memory the host backs lazily, a page cache that grows is written at the rate the host
// backs new guest pages (0.6 GB/s on the bench's VM), below the primary's. The flusher starts writeback
// every kChunk bytes written to a file and drops what lies more than kBehind behind its write offset,
// so a capture's pages are reused (the pages just dropped are those the next writes get) and the page
// cache a file holds stays near kBehind + kChunk.
//
// The writers never wait on it: they publish how far each file got and queue the file (at most once:
// a flag), which takes the flusher's lock for a push only; the flusher does the syscalls that wait
// (writeback, page cache drops) on its own thread. A file's fd stays open while the flusher holds it
// (CaptureFile is shared; the last holder closes it, the writer or the flusher).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "counters.h"

namespace kstreams {
namespace engine {

// One data file of a capture: its fd (closed by the destructor), shared by the writer and the flusher.
struct CaptureFile {
  CaptureFile(int fd, std::shared_ptr<TargetCounters> counters) : fd(fd), counters(std::move(counters)) {}
  ~CaptureFile();
  CaptureFile(const CaptureFile&) = delete;
  CaptureFile& operator=(const CaptureFile&) = delete;

  const int fd;
  const std::shared_ptr<TargetCounters> counters;  // bytesWrittenBack
  // The writer's, read by the flusher: the file's length (bytes spliced into it), and that it is
  // complete (the connection's end was written).
  std::atomic<uint64_t> written{0};
  std::atomic<bool> ended{false};
  // In the flusher's queue (at most one entry per file).
  std::atomic<bool> queued{false};
  // The writer's only: the length at which it queues the file next (a file shorter than one chunk is
  // queued only at its end: no wake-up of the flusher for each new connection).
  uint64_t nextKick = 4ull << 20;
  // The flusher's only: writeback started up to `started`; written back and dropped up to `dropped`.
  uint64_t started = 0, dropped = 0;
};

class CaptureFlusher {
 public:
  static constexpr uint64_t kChunk = 4ull << 20;   // writeback started every 4 MiB written to a file
  static constexpr uint64_t kBehind = 32ull << 20;  // page cache dropped more than 32 MiB behind the write offset
  // Queued files above which a file that only grew is not queued (its next kChunk, or its end, queues
  // it again). A file's end is always queued: each file is queued at most once, so the queue never
  // holds more than the files the engine has open.
  static constexpr size_t kMaxQueue = 4096;

  CaptureFlusher() = default;
  ~CaptureFlusher() { Stop(); }
  CaptureFlusher(const CaptureFlusher&) = delete;
  CaptureFlusher& operator=(const CaptureFlusher&) = delete;

  // Starts the thread (idempotent): by the capture sessions as they begin, so that the writers never
  // pay for it.
  void Start();
  // Writer side; never waits on the flusher's work. The file is now `written` bytes long.
  void Wrote(const std::shared_ptr<CaptureFile>& f, uint64_t written);
  // The file is complete: the flusher writes back and drops the rest of it.
  void Ended(const std::shared_ptr<CaptureFile>& f);
  // Stops and joins the thread; what is still queued is left to the kernel's own writeback. Only once
  // no writer posts any more (the engine's end, after the capture sessions' Close()).
  void Stop();

 private:
  void Enqueue(const std::shared_ptr<CaptureFile>& f, bool always);
  void Run();
  void Flush(CaptureFile& f);

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<CaptureFile>> queue_;
  bool stopping_ = false;
  std::thread thread_;  // started by the first capture session: an engine without file targets has none
};

}  // namespace engine
}  // namespace kstreams
