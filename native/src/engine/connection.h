// One intercepted connection: the primary path (client -> P -> app, app -> R -> client) and its legs.
#pragma once

#include <memory>
#include <vector>

#include "leg.h"
#include "pipes.h"
#include "transform.h"

namespace kstreams {
namespace engine {

// One socket of the primary path, with the readiness the worker keeps for it (edge-triggered epoll: set
// by events, cleared only on EAGAIN).
struct Side {
  int fd = -1;
  bool readable = false, writable = false;
  // Sticky: the socket reported EPOLLRDHUP/EPOLLHUP/EPOLLERR/EPOLLPRI (FIN, reset, error, urgent data).
  // From then on reads probe until EAGAIN or EOF instead of trusting a short splice, so the end of the
  // stream is always seen although its edge was already consumed.
  bool hup = false;
  bool eof = false;   // its stream ended (read 0)
  bool shut = false;  // we sent it our FIN (shutdown SHUT_WR)
};

struct Conn;

// The primary path's timer: retries of a transformed send refused for lack of send-buffer room, of a read
// that found no pipe, and the release of bytes the transform holds back (transform.h).
struct PrimaryTimer final : Timed {
  Conn* conn = nullptr;
  void OnTimer(uint64_t now) override;
  Conn* timedConn() const override { return conn; }
};

struct Conn {
  Side client, app;
  Pipe p;  // client -> app; taken from the worker's pool when bytes arrive, given back when empty
  Pipe r;  // app -> client
  uint32_t pWant = 0, rWant = 0;  // this connection's pipe sizes (settings at accept)
  bool resizeCounted = false;
  bool appConnected = false;
  bool appIsSink = false;  // a recorder's: app.fd is /dev/null, never watched, never reset
  uint64_t lastReadMs = 0; // a recorder's: when client bytes last came (its turns are bursts)
  bool primaryDone = false;  // both primary sockets closed (legs may still be draining)
  bool freed = false;
  bool ready = false;  // on the worker's ready list: it used its batch and has more to move
  // Turns of the conversation: client bytes read after the app had sent bytes start a new turn.
  uint32_t turn = 0;
  bool appAnswered = false;
  bool clientEndOffered = false;  // the legs were told that the client's stream ended
  std::vector<std::unique_ptr<Leg>> legs;
  Handle clientHandle{}, appHandle{};
  // spec.transform applied to the bytes sent to the app (applyTo primary|both): the profile taken at
  // accept, the upstream socket's attachment once it is connected.
  std::shared_ptr<const TransformProfile> xfProfile;
  std::unique_ptr<TransformedSocket> appXf;
  uint64_t xfRetryAt = 0, xfHoldAt = 0;
  // Bytes arrived but no pipe could be made (the process is out of fds for a moment): the bytes wait in
  // the socket and the read is tried again at pipeRetryAt; pipeWaitSince bounds how long (then reset).
  uint64_t pipeRetryAt = 0, pipeWaitSince = 0;
  bool holdDue = false;
  PrimaryTimer timer;
  Conn() { timer.conn = this; }
};

}  // namespace engine
}  // namespace kstreams
