// Addresses and sampling: numeric socket addresses, their text forms, and the consistent hash that picks
// which connections are mirrored.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>

namespace kstreams {
namespace engine {

// A resolved numeric address and port.
struct SockAddr {
  sockaddr_storage storage{};
  socklen_t len = 0;
  int family() const { return storage.ss_family; }
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

// Parses a numeric IPv4/IPv6 host and a port; false when the host is not a numeric address.
bool ParseAddress(const std::string& host, uint16_t port, SockAddr* out);
// Numeric host and port of an address (v4-mapped IPv6 addresses are shown as IPv4).
std::string FormatHost(const SockAddr& addr);
uint16_t Port(const SockAddr& addr);
// v4-mapped IPv6 -> IPv4, so upstream sockets are IPv4 and can bind the IPv4 upstream source.
SockAddr Unmap(const SockAddr& addr);

// 0..9999: the consistent hash of a connection's 4-tuple (client, original destination). A v4-mapped
// IPv6 address hashes like its IPv4 form, so the dual-stack listener and a v4 caller agree.
uint32_t SamplingBucket(const SockAddr& src, const SockAddr& dst);

}  // namespace engine
}  // namespace kstreams
