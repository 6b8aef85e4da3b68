#include "address.h"

#include <arpa/inet.h>
#include <string.h>

namespace kstreams {
namespace engine {

namespace {

bool IsV4Mapped(const SockAddr& a) {
  if (a.family() != AF_INET6) return false;
  auto* s6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
  return IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr);
}

}  // namespace

SockAddr Unmap(const SockAddr& a) {
  if (!IsV4Mapped(a)) return a;
  auto* s6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
  SockAddr out;
  auto* s4 = reinterpret_cast<sockaddr_in*>(&out.storage);
  s4->sin_family = AF_INET;
  s4->sin_port = s6->sin6_port;
  memcpy(&s4->sin_addr, &s6->sin6_addr.s6_addr[12], 4);
  out.len = sizeof(sockaddr_in);
  return out;
}

bool ParseAddress(const std::string& host, uint16_t port, SockAddr* out) {
  *out = SockAddr{};
  auto* s4 = reinterpret_cast<sockaddr_in*>(&out->storage);
  if (inet_pton(AF_INET, host.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    out->len = sizeof(sockaddr_in);
    return true;
  }
  auto* s6 = reinterpret_cast<sockaddr_in6*>(&out->storage);
  if (inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    out->len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

std::string FormatHost(const SockAddr& addr) {
  SockAddr a = Unmap(addr);
  char buf[INET6_ADDRSTRLEN] = "";
  if (a.family() == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_addr, buf, sizeof buf);
  else if (a.family() == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_addr, buf, sizeof buf);
  return buf;
}

uint16_t Port(const SockAddr& addr) {
  if (addr.family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&addr.storage)->sin_port);
  if (addr.family() == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr.storage)->sin6_port);
  return 0;
}

uint32_t SamplingBucket(const SockAddr& src, const SockAddr& dst) {
  // FNV-1a over the canonical bytes (address, address, port, port in network order), then a splitmix64
  // finalizer: FNV alone leaves sequential ports clustered in the low digits.
  uint64_t h = 0xcbf29ce484222325ULL ^ 0x6b73747265616d73ULL;  // seeded with "kstreams"
  auto mix = [&h](const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; i++) {
      h ^= p[i];
      h *= 0x100000001b3ULL;
    }
  };
  auto addAddr = [&mix](const SockAddr& raw) {
    SockAddr a = Unmap(raw);
    if (a.family() == AF_INET) {
      auto* s4 = reinterpret_cast<const sockaddr_in*>(&a.storage);
      mix(reinterpret_cast<const uint8_t*>(&s4->sin_addr), 4);
    } else if (a.family() == AF_INET6) {
      auto* s6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
      mix(s6->sin6_addr.s6_addr, 16);
    }
  };
  addAddr(src);
  addAddr(dst);
  uint8_t ports[4] = {uint8_t(Port(src) >> 8), uint8_t(Port(src)), uint8_t(Port(dst) >> 8), uint8_t(Port(dst))};
  mix(ports, 4);
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return uint32_t(h % 10000);
}

}  // namespace engine
}  // namespace kstreams
