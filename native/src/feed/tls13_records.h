// TLS 1.3 records of an agent feed connection after its handshake, without OpenSSL's per-connection object.
//
// Why (docs/adr/0008, Costs): an idle SSL object keeps about 13.6 KiB even with its buffers released, which
// at 10,000 agents is 136 MiB of the leader's memory for state that an established TLS 1.3 connection does
// not need. What it needs is, per direction, the traffic secret, the key and IV derived from it and a sequence
// number: about 200 bytes. So once OpenSSL has finished a TLS 1.3 handshake (and holds nothing unread or
// unwritten), the feed takes the two application traffic secrets it logged, frees the SSL object and seals
// and opens the records itself (RFC 8446, section 5), with OpenSSL's AEAD ciphers and its TLS 1.3 key
// schedule (the "TLS13-KDF"). This is what kernel TLS does with the same secrets; the kernel build here has no
// CONFIG_TLS. A connection that negotiated TLS 1.2 or anything this does not handle keeps its SSL object.
//
// What it handles after the handshake: application data, close_notify (and any other alert: the connection
// ends), KeyUpdate both ways (RFC 8446, 4.6.3), zero padding. Anything else (a record over the size limit, a
// tag that does not verify, a handshake message other than KeyUpdate, a change_cipher_spec) ends the
// connection with the reason.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <memory>
#include <string>

typedef struct ssl_st SSL;

namespace kstreams::feed {

// This thread's OpenSSL error queue as one line (and empties it).
std::string SslErrors();

// Records the two application traffic secrets an SSL object logs while its handshake runs (SSL_CTX keylog
// callback: InstallKeylog on the context, Attach on each SSL before its handshake).
struct HandshakeSecrets {
  std::string client;  // CLIENT_TRAFFIC_SECRET_0, raw bytes
  std::string server;  // SERVER_TRAFFIC_SECRET_0
  ~HandshakeSecrets();
};

class Tls13Records {
 public:
  ~Tls13Records();

  // The SSL context's keylog callback: fills the HandshakeSecrets attached to the SSL (SSL_set_app_data).
  static void Keylog(const SSL* ssl, const char* line);

  // From an SSL whose handshake just finished: the record state, or nullptr and *why when the connection
  // must keep its SSL object (TLS 1.2, a cipher suite not handled here, bytes buffered inside OpenSSL).
  static std::unique_ptr<Tls13Records> Take(SSL* ssl, HandshakeSecrets* secrets, std::string* why);

  enum class Opened { kMore, kPeerClosed, kError };
  // Opens every complete record at the front of *wire (bytes read from the socket), removing them: their
  // application data is appended to *plain, and records to send in answer (a KeyUpdate's) to *reply. kMore
  // when *wire holds no complete record any more; kPeerClosed on close_notify; kError with *why otherwise.
  Opened Open(std::string* wire, std::string* plain, std::string* reply, std::string* why);

  // Seals up to kMaxPlain bytes of application data as one record appended to *wire; false (and *why) when
  // the cipher fails, which it should not.
  bool Seal(const char* data, size_t n, std::string* wire, std::string* why);
  // The close_notify alert, as one record.
  bool SealCloseNotify(std::string* wire, std::string* why);

  static constexpr size_t kMaxPlain = 16384;  // 2^14, RFC 8446 5.1

  struct Suite;      // a TLS 1.3 cipher suite handled here (the .cc's table)
  struct Direction;  // one direction's secret, key, IV and sequence number

 private:
  Tls13Records() = default;
  bool SealRecord(uint8_t type, const char* data, size_t n, std::string* wire, std::string* why);
  bool KeyUpdate(const uint8_t* msg, size_t n, std::string* reply, std::string* why);

  const Suite* suite_ = nullptr;
  std::unique_ptr<Direction> read_;   // the agent's records
  std::unique_ptr<Direction> write_;  // ours
};

}  // namespace kstreams::feed
