// See tls13_records.h.
#include "tls13_records.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/ssl.h>
#include <openssl/tls1.h>
#include <string.h>

namespace kstreams::feed {

namespace {

constexpr uint8_t kChangeCipherSpec = 20, kAlert = 21, kHandshake = 22, kApplicationData = 23;
constexpr uint8_t kKeyUpdate = 24;
constexpr size_t kHeader = 5, kTag = 16, kIv = 12;
constexpr size_t kMaxCipher = Tls13Records::kMaxPlain + 256;  // RFC 8446 5.2

int Hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// HKDF-Expand-Label(secret, label, "", out_len) with OpenSSL's own TLS 1.3 KDF.
bool ExpandLabel(const char* digest, const uint8_t* secret, size_t secret_len, const char* label, uint8_t* out,
                 size_t out_len) {
  static EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "TLS13-KDF", nullptr);  // kept for the process
  if (!kdf) return false;
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  if (!ctx) return false;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  static const char prefix[] = "tls13 ";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(secret), secret_len),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, const_cast<char*>(prefix), sizeof prefix - 1),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, const_cast<char*>(label), strlen(label)),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_DATA, const_cast<char*>(""), 0),
      OSSL_PARAM_construct_end(),
  };
  bool ok = EVP_KDF_derive(ctx, out, out_len, params) == 1;
  EVP_KDF_CTX_free(ctx);
  return ok;
}

// One cipher context per feed thread, keyed again for every record (records are few: an idle agent sends one
// every 15 s), so that a connection holds no cipher state of OpenSSL's.
struct ThreadCipher {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  uint8_t scratch[kMaxCipher];
  ~ThreadCipher() { EVP_CIPHER_CTX_free(ctx); }
};

ThreadCipher& Cipher() {
  thread_local ThreadCipher tc;
  return tc;
}

}  // namespace

std::string SslErrors() {
  std::string out;
  unsigned long e;
  char buf[256];
  while ((e = ERR_get_error()) != 0) {
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

struct Tls13Records::Suite {
  uint32_t id;
  const EVP_CIPHER* (*cipher)();
  const char* digest;
  size_t key_len;
  size_t hash_len;
};

namespace {
const Tls13Records::Suite* FindSuite(uint32_t id);
}

struct Tls13Records::Direction {
  uint8_t secret[48];
  size_t secret_len = 0;
  uint8_t key[32];
  uint8_t iv[kIv];
  uint64_t seq = 0;

  ~Direction() { OPENSSL_cleanse(this, sizeof *this); }

  bool Derive(const Suite& s) {
    seq = 0;
    return ExpandLabel(s.digest, secret, secret_len, "key", key, s.key_len) &&
           ExpandLabel(s.digest, secret, secret_len, "iv", iv, kIv);
  }
  // application_traffic_secret_N+1 (RFC 8446 7.2), and its key and IV.
  bool Next(const Suite& s) {
    uint8_t next[48];
    if (!ExpandLabel(s.digest, secret, secret_len, "traffic upd", next, secret_len)) return false;
    memcpy(secret, next, secret_len);
    OPENSSL_cleanse(next, sizeof next);
    return Derive(s);
  }
  void Nonce(uint8_t* out) const {
    memcpy(out, iv, kIv);
    for (int i = 0; i < 8; i++) out[kIv - 1 - i] ^= uint8_t(seq >> (8 * i));
  }
};

namespace {
const Tls13Records::Suite kSuites[] = {
    {TLS1_3_CK_AES_128_GCM_SHA256, EVP_aes_128_gcm, "SHA256", 16, 32},
    {TLS1_3_CK_AES_256_GCM_SHA384, EVP_aes_256_gcm, "SHA384", 32, 48},
    {TLS1_3_CK_CHACHA20_POLY1305_SHA256, EVP_chacha20_poly1305, "SHA256", 32, 32},
};
const Tls13Records::Suite* FindSuite(uint32_t id) {
  for (const auto& s : kSuites)
    if (s.id == id) return &s;
  return nullptr;
}
}  // namespace

HandshakeSecrets::~HandshakeSecrets() {
  OPENSSL_cleanse(client.data(), client.size());
  OPENSSL_cleanse(server.data(), server.size());
}

Tls13Records::~Tls13Records() = default;

void Tls13Records::Keylog(const SSL* ssl, const char* line) {
  auto* secrets = static_cast<HandshakeSecrets*>(SSL_get_app_data(ssl));
  if (!secrets) return;
  std::string* into;
  if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0) into = &secrets->client;
  else if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0) into = &secrets->server;
  else return;
  const char* hex = strrchr(line, ' ');
  if (!hex) return;
  hex++;
  size_t n = strlen(hex);
  if (n % 2 != 0 || n / 2 > 48) return;
  into->assign(n / 2, '\0');
  for (size_t i = 0; i < n / 2; i++) {
    int hi = Hex(hex[2 * i]), lo = Hex(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return into->clear();
    (*into)[i] = char(hi << 4 | lo);
  }
}

std::unique_ptr<Tls13Records> Tls13Records::Take(SSL* ssl, HandshakeSecrets* secrets, std::string* why) {
  if (SSL_version(ssl) != TLS1_3_VERSION) return *why = "TLS 1.2", nullptr;
  if (SSL_has_pending(ssl)) return *why = "bytes buffered in OpenSSL after the handshake", nullptr;
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl);
  const Suite* suite = cipher ? FindSuite(SSL_CIPHER_get_id(cipher)) : nullptr;
  if (!suite) return *why = std::string("cipher suite ") + (cipher ? SSL_CIPHER_get_name(cipher) : "?"), nullptr;
  if (!secrets || secrets->client.size() != suite->hash_len || secrets->server.size() != suite->hash_len)
    return *why = "the traffic secrets were not logged", nullptr;
  std::unique_ptr<Tls13Records> r(new Tls13Records());
  r->suite_ = suite;
  r->read_ = std::make_unique<Direction>();
  r->write_ = std::make_unique<Direction>();
  r->read_->secret_len = r->write_->secret_len = suite->hash_len;
  memcpy(r->read_->secret, secrets->client.data(), suite->hash_len);
  memcpy(r->write_->secret, secrets->server.data(), suite->hash_len);
  if (!r->read_->Derive(*suite) || !r->write_->Derive(*suite)) {
    *why = "deriving the traffic keys: " + SslErrors();
    return nullptr;
  }
  return r;
}

Tls13Records::Opened Tls13Records::Open(std::string* wire, std::string* plain, std::string* reply, std::string* why) {
  ThreadCipher& tc = Cipher();
  size_t off = 0;
  Opened result = Opened::kMore;
  while (wire->size() - off >= kHeader) {
    const uint8_t* h = reinterpret_cast<const uint8_t*>(wire->data()) + off;
    size_t len = size_t(h[3]) << 8 | h[4];
    if (h[0] != kApplicationData) {
      *why = h[0] == kChangeCipherSpec ? std::string("a change_cipher_spec record after the handshake")
                                       : "a TLS record of type " + std::to_string(h[0]) + " after the handshake";
      return Opened::kError;
    }
    if (len > kMaxCipher || len < kTag + 1) {
      *why = "a TLS record of " + std::to_string(len) + " bytes (record_overflow)";
      return Opened::kError;
    }
    if (wire->size() - off < kHeader + len) break;
    uint8_t nonce[kIv];
    read_->Nonce(nonce);
    int outl = 0, fin = 0;
    const uint8_t* body = h + kHeader;
    size_t clen = len - kTag;
    ERR_clear_error();
    bool ok = EVP_DecryptInit_ex(tc.ctx, suite_->cipher(), nullptr, read_->key, nonce) == 1 &&
              EVP_DecryptUpdate(tc.ctx, nullptr, &outl, h, int(kHeader)) == 1 &&
              EVP_DecryptUpdate(tc.ctx, tc.scratch, &outl, body, int(clen)) == 1 &&
              EVP_CIPHER_CTX_ctrl(tc.ctx, EVP_CTRL_AEAD_SET_TAG, int(kTag), const_cast<uint8_t*>(body + clen)) == 1 &&
              EVP_DecryptFinal_ex(tc.ctx, tc.scratch + outl, &fin) == 1;
    if (!ok) {
      ERR_clear_error();
      *why = "a TLS record that does not authenticate (bad_record_mac)";
      return Opened::kError;
    }
    read_->seq++;
    // TLSInnerPlaintext: content, the content type, zero padding.
    size_t n = size_t(outl) + size_t(fin);
    while (n > 0 && tc.scratch[n - 1] == 0) n--;
    if (n == 0) {
      *why = "a TLS record with no content type";
      return Opened::kError;
    }
    uint8_t type = tc.scratch[n - 1];
    n--;
    off += kHeader + len;
    if (type == kApplicationData) {
      plain->append(reinterpret_cast<const char*>(tc.scratch), n);
    } else if (type == kAlert) {
      if (n == 2 && tc.scratch[1] == 0) {
        result = Opened::kPeerClosed;  // close_notify: what follows it is not read
        break;
      }
      *why = n == 2 ? "a TLS alert from the agent (level " + std::to_string(tc.scratch[0]) + ", description " +
                          std::to_string(tc.scratch[1]) + ")"
                    : std::string("a malformed TLS alert");
      return Opened::kError;
    } else if (type == kHandshake) {
      if (!KeyUpdate(tc.scratch, n, reply, why)) return Opened::kError;
    } else {
      *why = "a TLS record with inner content type " + std::to_string(type);
      return Opened::kError;
    }
  }
  wire->erase(0, off);
  return result;
}

// A KeyUpdate (the only handshake message after a TLS 1.3 server's handshake that this accepts; it must be
// alone in its record, RFC 8446 5.1): the agent's next records use its next secret; when it asks, ours too,
// after our own KeyUpdate, sealed with the current key.
bool Tls13Records::KeyUpdate(const uint8_t* msg, size_t n, std::string* reply, std::string* why) {
  if (n != 5 || msg[0] != kKeyUpdate || msg[1] != 0 || msg[2] != 0 || msg[3] != 1 || msg[4] > 1) {
    *why = n >= 1 && msg[0] != kKeyUpdate
               ? "a TLS handshake message of type " + std::to_string(msg[0]) + " after the handshake"
               : std::string("a malformed TLS KeyUpdate");
    return false;
  }
  if (!read_->Next(*suite_)) return *why = "updating the agent's traffic key: " + SslErrors(), false;
  if (msg[4] == 1) {
    static const char update_not_requested[] = {char(kKeyUpdate), 0, 0, 1, 0};
    if (!SealRecord(kHandshake, update_not_requested, sizeof update_not_requested, reply, why)) return false;
    if (!write_->Next(*suite_)) return *why = "updating our traffic key: " + SslErrors(), false;
  }
  return true;
}

bool Tls13Records::Seal(const char* data, size_t n, std::string* wire, std::string* why) {
  return SealRecord(kApplicationData, data, n, wire, why);
}

bool Tls13Records::SealCloseNotify(std::string* wire, std::string* why) {
  static const char close_notify[] = {1, 0};  // warning, close_notify
  return SealRecord(kAlert, close_notify, sizeof close_notify, wire, why);
}

bool Tls13Records::SealRecord(uint8_t type, const char* data, size_t n, std::string* wire, std::string* why) {
  if (n > kMaxPlain) return *why = "a record over 2^14 bytes", false;
  ThreadCipher& tc = Cipher();
  size_t len = n + 1 + kTag;
  uint8_t header[kHeader] = {kApplicationData, 3, 3, uint8_t(len >> 8), uint8_t(len)};
  uint8_t nonce[kIv];
  write_->Nonce(nonce);
  size_t at = wire->size();
  wire->resize(at + kHeader + len);
  auto* out = reinterpret_cast<uint8_t*>(&(*wire)[at]);
  memcpy(out, header, kHeader);
  int l1 = 0, l2 = 0, l3 = 0, l0 = 0;
  ERR_clear_error();
  bool ok = EVP_EncryptInit_ex(tc.ctx, suite_->cipher(), nullptr, write_->key, nonce) == 1 &&
            EVP_EncryptUpdate(tc.ctx, nullptr, &l0, header, int(kHeader)) == 1 &&
            EVP_EncryptUpdate(tc.ctx, out + kHeader, &l1, reinterpret_cast<const uint8_t*>(data), int(n)) == 1 &&
            EVP_EncryptUpdate(tc.ctx, out + kHeader + l1, &l2, &type, 1) == 1 &&
            EVP_EncryptFinal_ex(tc.ctx, out + kHeader + l1 + l2, &l3) == 1 && size_t(l1 + l2 + l3) == n + 1 &&
            EVP_CIPHER_CTX_ctrl(tc.ctx, EVP_CTRL_AEAD_GET_TAG, int(kTag), out + kHeader + n + 1) == 1;
  if (!ok) {
    wire->resize(at);
    *why = "sealing a TLS record: " + SslErrors();
    return false;
  }
  write_->seq++;
  return true;
}

}  // namespace kstreams::feed
