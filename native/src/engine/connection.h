// One intercepted connection: the primary path (client -> P -> app, app -> R -> client) and its legs.
#pragma once

#include <memory>
#include <vector>

#include "leg.h"
#include "pipes.h"

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

struct Conn {
  Side client, app;
  Pipe p;  // client -> app; taken from the worker's pool when bytes arrive, given back when empty
  Pipe r;  // app -> client
  uint32_t pWant = 0, rWant = 0;  // this connection's pipe sizes (settings at accept)
  bool resizeCounted = false;
  bool appConnected = false;
  bool primaryDone = false;  // both primary sockets closed (legs may still be draining)
  bool freed = false;
  bool ready = false;  // on the worker's ready list: it used its batch and has more to move
  // Turns of the conversation: client bytes read after the app had sent bytes start a new turn.
  uint32_t turn = 0;
  bool appAnswered = false;
  bool clientEndOffered = false;  // the legs were told that the client's stream ended
  std::vector<std::unique_ptr<Leg>> legs;
  Handle clientHandle{}, appHandle{};
};

}  // namespace engine
}  // namespace kstreams
