// One epoll worker thread: it owns its connections, their pipes and legs for their whole life, so the
// data path takes no locks.
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "accept_policy.h"
#include "connection.h"
#include "engine.h"
#include "leg.h"
#include "pipes.h"

namespace kstreams {
namespace engine {

class Worker final : public LegHost {
 public:
  Worker(Engine* engine, int index) : engine_(engine), index_(index), k_(engine->countersOf(index)) {}
  ~Worker() override;

  // Starts the thread; it enters the namespace and (worker 0) creates the listener. Blocks until that
  // is done; false with *error set when it failed.
  bool Start(int* listener, SockAddr* listenAddress, StartError* error);
  // Tells the thread to look at the engine's mode (drain, reset). The wake fd lives until the Worker is
  // destroyed, after Join(), so a late Wake() never writes into a reused fd number.
  void Wake();
  void Join();

  // LegHost
  bool Watch(int fd, Handle* handle, uint32_t events) override;
  void SetTimer(Leg* leg, uint64_t at) override { SetTimerOf(leg, at); }
  PipePool& pipes() override { return pool_; }
  int workerIndex() const override { return index_; }
  WorkerCounters& counters() override { return k_; }
  bool GrantMirrorBuffer(uint64_t bytes) override { return engine_->GrantMirrorBuffer(bytes); }
  uint64_t GrantMirrorBufferUpTo(uint64_t want, uint64_t min) override { return engine_->GrantMirrorBufferUpTo(want, min); }
  void ReleaseMirrorBuffer(uint64_t bytes) override { engine_->ReleaseMirrorBuffer(bytes); }

 private:
  // Rounds of Pump() one connection gets per turn of the loop before the others' events are served.
  static constexpr int kPumpRounds = 16;

  bool Setup(int* listener, SockAddr* listenAddress, StartError* error);
  void Run();
  void Dispatch(Handle* h, uint32_t ev);
  void Accept(bool all);
  void OpenConnection(int fd, const SockAddr& peer, const SockAddr& local);
  void Pump(Conn* c);
  void RunReady();
  void StartDrain();
  void ResetAll();
  void SetTimerOf(Timed* t, uint64_t at);
  void ExpireTimers();
  int NextTimeoutMs();
  void PauseListener();
  void MaybeResumeListener();
  void PublishGauges();

  // The primary path (primary.cc).
  bool PumpPrimary(Conn* c);
  // A recorder's connection with its one leg: the leg may hold the client back (Leg::OfferHeld).
  bool PumpRecorder(Conn* c);
  bool Fill(Conn* c, Side& from, Pipe& pipe, uint32_t want, size_t* n, bool* progress);
  bool Flush(Conn* c, Side& from, Pipe& pipe, Side& to, Counter& delivered, TransformedSocket* xf, bool* progress);
  bool TakePipe(Conn* c, Pipe* p, uint32_t want);
  // Puts the connected upstream socket under the connection's transform; false when the connection
  // was reset because it could not be.
  bool AttachAppTransform(Conn* c);
  // Releases bytes the transform holds back when the client is quiet or done; false when aborted.
  bool FlushHeld(Conn* c, bool* progress);
  void RearmPrimary(Conn* c);
  void AbortPrimary(Conn* c);
  void ClosePrimary(Conn* c);
  void MaybeFree(Conn* c);

  Engine* engine_;
  int index_;
  WorkerCounters& k_;
  std::thread thread_;
  int epfd_ = -1, wakeFd_ = -1;
  int listener_ = -1;
  bool listenerWatched_ = false;
  bool draining_ = false;
  bool resetting_ = false;
  AcceptGate gate_;
  PipePool pool_;
  Handle listenerHandle_{nullptr, Handle::kListener, nullptr}, wakeHandle_{nullptr, Handle::kWake, nullptr};
  std::set<Conn*> conns_;
  std::vector<Conn*> graveyard_;  // freed after the current epoll batch, whose events may point at them
  std::deque<Conn*> ready_;
  std::set<std::pair<uint64_t, Timed*>> timers_;
  std::map<Timed*, uint64_t> timerOf_;

  // Start handshake with the thread that created us.
  std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false;
  bool ok_ = false;
};

}  // namespace engine
}  // namespace kstreams
