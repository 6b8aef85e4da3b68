// See feed_server.h.
#include "feed_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>

#include "tls13_records.h"

namespace kstreams::feed {

namespace {

constexpr int64_t kSweepEveryMs = 250;
// A connection the operator ended waits this long for the agent's FIN before it is closed anyway.
constexpr int64_t kEndingGraceMs = 5000;
// A handshake not done within this long is dropped (a client that connects and says nothing).
constexpr int64_t kHandshakeTimeoutMs = 10000;
// After this many handshakes (or closes) and none in progress, the freed heap goes back to the system: a
// reconnect storm holds thousands of handshakes' state at once, which malloc would otherwise keep.
constexpr uint32_t kTrimAfterChurn = 256;
// At most this many handshakes at once (each holds tens of KiB until it ends): the rest wait in the listen
// backlog, where they cost the operator nothing. Accepting resumes below half of it.
constexpr size_t kMaxHandshakes = 256;
constexpr int64_t kTrimEveryMs = 2000;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

int SelectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
               void* arg) {
  auto* want = static_cast<const std::string*>(arg);
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, reinterpret_cast<const unsigned char*>(want->data()),
                            unsigned(want->size()), in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // the client gets no_application_protocol, as from Node's tls
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

// A server context for one key and certificate chain (PEM: the leaf first, then its issuers).
SSL_CTX* MakeContext(const std::string& key_pem, const std::string& cert_pem, std::string* alpn_wire, std::string* error) {
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) return *error = "SSL_CTX_new: " + SslErrors(), nullptr;
  auto fail = [&](const std::string& what) {
    *error = what + (ERR_peek_error() ? ": " + SslErrors() : "");
    SSL_CTX_free(ctx);
    return nullptr;
  };
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // Agents reconnect rarely and each to one replica: resumption would buy little and cost memory per session.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  // An agent that goes away without close_notify (a destroyed socket, a killed pod) is an ordinary end.
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_alpn_select_cb(ctx, SelectAlpn, alpn_wire);
  // The traffic secrets, for the connections that leave their SSL object after the handshake.
  SSL_CTX_set_keylog_callback(ctx, Tls13Records::Keylog);

  BIO* bio = BIO_new_mem_buf(cert_pem.data(), int(cert_pem.size()));
  X509* leaf = bio ? PEM_read_bio_X509(bio, nullptr, nullptr, nullptr) : nullptr;
  if (!leaf) {
    BIO_free(bio);
    return fail("the feed certificate is not a PEM certificate");
  }
  bool ok = SSL_CTX_use_certificate(ctx, leaf) == 1;
  X509_free(leaf);
  while (ok) {
    X509* issuer = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    if (!issuer) break;
    ok = SSL_CTX_add0_chain_cert(ctx, issuer) == 1;
    if (!ok) X509_free(issuer);
  }
  BIO_free(bio);
  ERR_clear_error();  // the end of the PEM chain
  if (!ok) return fail("the feed certificate chain could not be used");

  bio = BIO_new_mem_buf(key_pem.data(), int(key_pem.size()));
  EVP_PKEY* key = bio ? PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(bio);
  if (!key) return fail("the feed key is not a PEM private key");
  ok = SSL_CTX_use_PrivateKey(ctx, key) == 1;
  EVP_PKEY_free(key);
  if (!ok || SSL_CTX_check_private_key(ctx) != 1) return fail("the feed key does not match its certificate");
  return ctx;
}

std::string PeerAddress(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
    // A v4 client of a dual-stack listener reads as the v4 address, as in Node.
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], host, sizeof host);
  }
  return std::string(host) + ":" + std::to_string(port);
}

// Drops a string's heap storage when it is empty (an idle connection keeps none).
void Release(std::string& s) {
  if (s.empty() && s.capacity() > 64) std::string().swap(s);
}

}  // namespace

struct Server::Conn {
  uint32_t id;
  int fd;
  SSL* ssl;                                  // until the handshake ends, and after it where records is unset
  std::unique_ptr<HandshakeSecrets> secrets;  // while the handshake runs
  std::unique_ptr<Tls13Records> records;      // TLS 1.3 after the handshake, without the SSL object
  std::string remote;
  enum State : uint8_t { kHandshake, kOpen, kEnding } state = kHandshake;
  bool opened = false;       // its opened event went out (so a closed event follows)
  bool end_queued = false;   // close after the queue is flushed
  bool shut = false;         // close_notify and FIN sent
  bool want_write = false;   // the last TLS call needs the socket writable
  uint32_t interest = 0;     // what epoll watches for it
  std::string in;            // bytes of the line being read
  std::string out;           // bytes queued, from out_off
  size_t out_off = 0;
  std::string wire_in;       // with records: bytes of the TLS record being read
  std::string wire_out;      // with records: sealed records not yet written, from wire_off
  size_t wire_off = 0;
  int64_t last_read_ms = 0;
  int64_t since_ms = 0;      // accepted, or ending
  std::string end_reason = "closed by the operator";
};

std::unique_ptr<Server> Server::Start(Options options, std::function<void()> deliver, std::string* error) {
  std::unique_ptr<Server> s(new Server());
  s->o_ = std::move(options);
  s->deliver_ = std::move(deliver);
  if (s->o_.alpn.empty() || s->o_.alpn.size() > 255) return *error = "alpn must be 1..255 bytes", nullptr;
  s->alpn_wire_ = std::string(1, char(s->o_.alpn.size())) + s->o_.alpn;
  s->ctx_ = MakeContext(s->o_.key_pem, s->o_.cert_pem, &s->alpn_wire_, error);
  if (!s->ctx_) return nullptr;
  s->o_.key_pem.clear();
  s->o_.cert_pem.clear();

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(s->o_.port);
  int gai = getaddrinfo(s->o_.host.empty() ? nullptr : s->o_.host.c_str(), port.c_str(), &hints, &res);
  if (gai != 0) return *error = "feed listen address " + s->o_.host + ": " + gai_strerror(gai), nullptr;
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1, zero = 0;
  if (fd >= 0) {
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (res->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  }
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
    int err = errno;
    freeaddrinfo(res);
    if (fd >= 0) close(fd);
    return *error = "feed listen on " + s->o_.host + ":" + port + ": " + strerror(err), nullptr;
  }
  freeaddrinfo(res);
  s->listen_fd_ = fd;
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  s->port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                               : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

  s->epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  s->wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s->epoll_fd_ < 0 || s->wake_fd_ < 0) return *error = std::string("feed epoll: ") + strerror(errno), nullptr;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;  // the listener
  epoll_ctl(s->epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  ev.data.u64 = UINT64_MAX;  // the wake-up
  epoll_ctl(s->epoll_fd_, EPOLL_CTL_ADD, s->wake_fd_, &ev);
  s->thread_ = std::thread([p = s.get()] { p->Run(); });
  return s;
}

Server::~Server() {
  Close();
  Join();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
  SSL_CTX_free(ctx_);
}

void Server::Join() {
  if (thread_.joinable()) thread_.join();
}

bool Server::Send(uint32_t id, std::string line) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_ || !live_.count(id)) return false;
  bool wake = commands_.empty();
  commands_.push_back({Command::kSend, id, std::move(line)});
  if (wake) {
    uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof one);
  }
  return true;
}

void Server::End(uint32_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_ || !live_.erase(id)) return;
  bool wake = commands_.empty();
  commands_.push_back({Command::kEnd, id, {}});
  if (wake) {
    uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof one);
  }
}

bool Server::SetTls(const std::string& key_pem, const std::string& cert_pem, std::string* error) {
  SSL_CTX* next = MakeContext(key_pem, cert_pem, &alpn_wire_, error);
  if (!next) return false;
  std::lock_guard<std::mutex> lock(ctx_mu_);
  SSL_CTX_free(ctx_);  // connections made with it hold their own reference
  ctx_ = next;
  return true;
}

void Server::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) return;
  stop_ = true;
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
}

std::vector<Event> Server::TakeEvents() {
  std::lock_guard<std::mutex> lock(mu_);
  delivering_ = false;
  std::vector<Event> out;
  out.swap(events_);
  return out;
}

void Server::Emit(EventKind kind, uint32_t id, std::string data) {
  bool call;
  {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back({kind, id, std::move(data)});
    call = !delivering_;
    delivering_ = true;
  }
  if (call) deliver_();
}

void Server::Run() {
  std::vector<epoll_event> events(256);
  for (;;) {
    int n = epoll_wait(epoll_fd_, events.data(), int(events.size()), int(kSweepEveryMs));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; i++) {
      uint64_t key = events[i].data.u64;
      if (key == 0) {
        Accept();
      } else if (key == UINT64_MAX) {
        uint64_t v;
        (void)!read(wake_fd_, &v, sizeof v);
      } else {
        auto it = conns_.find(uint32_t(key));
        if (it != conns_.end()) Service(it->second);
      }
    }
    RunCommands();
    bool stop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop = stop_;
    }
    if (stop) break;
    int64_t now = NowMs();
    if (now - last_sweep_ms_ >= kSweepEveryMs) Sweep(now);
  }
  // Closing: every connection goes (a best-effort close_notify each), then the listener.
  stopping_ = true;
  PauseAccepting();
  std::vector<Conn*> all;
  for (auto& [id, c] : conns_) all.push_back(c);
  for (Conn* c : all) {
    if (c->state == Conn::kOpen) {
      if (!Flush(c)) continue;  // gone already, its closed event out
      SendCloseNotify(c);
    }
    Destroy(c, c->state == Conn::kEnding ? c->end_reason : "the operator's feed server closed");
  }
  close(listen_fd_);
  listen_fd_ = -1;
  Emit(EventKind::kStopped, 0, {});
}

void Server::Accept() {
  for (;;) {
    if (handshakes_ >= kMaxHandshakes) {
      PauseAccepting();
      return;
    }
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      // Out of descriptors: stop watching the listener until the next sweep instead of spinning on it.
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) PauseAccepting();
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    int idle = 30;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    SSL* ssl;
    {
      std::lock_guard<std::mutex> lock(ctx_mu_);
      ssl = SSL_new(ctx_);
    }
    if (!ssl || SSL_set_fd(ssl, fd) != 1) {
      ERR_clear_error();
      if (ssl) SSL_free(ssl);
      close(fd);
      continue;
    }
    SSL_set_accept_state(ssl);
    auto secrets = std::make_unique<HandshakeSecrets>();
    SSL_set_app_data(ssl, secrets.get());
    uint32_t id = next_id_++;
    if (next_id_ == 0 || next_id_ == UINT32_MAX) next_id_ = 1;
    auto* c = new Conn{};
    c->id = id;
    c->fd = fd;
    c->ssl = ssl;
    c->secrets = std::move(secrets);
    c->remote = PeerAddress(peer);
    c->last_read_ms = c->since_ms = NowMs();
    conns_[id] = c;
    handshakes_++;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = id;
    c->interest = ev.events;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    Service(c);
  }
}

// Whatever the socket is ready for: the handshake, reading every pending line, writing the queue.
void Server::Service(Conn* c) {
  if (c->state == Conn::kHandshake && !Handshake(c)) return;
  if (c->state == Conn::kHandshake) return UpdateInterest(c);
  if (!ReadAll(c)) return;
  if (!Flush(c)) return;
  UpdateInterest(c);
}

bool Server::Handshake(Conn* c) {
  ERR_clear_error();
  int r = SSL_do_handshake(c->ssl);
  if (r != 1) {
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      c->want_write = e == SSL_ERROR_WANT_WRITE;
      return true;
    }
    Destroy(c, "TLS handshake failed: " + SslErrors());
    return false;
  }
  const unsigned char* proto = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(c->ssl, &proto, &len);
  if (len != o_.alpn.size() || memcmp(proto, o_.alpn.data(), len) != 0) {
    Destroy(c, "a connection without ALPN " + o_.alpn);
    return false;
  }
  // TLS 1.3 goes on without the SSL object (tls13_records.h); anything else keeps it.
  SSL_set_app_data(c->ssl, nullptr);
  if (o_.tls_records) {
    std::string why;
    c->records = Tls13Records::Take(c->ssl, c->secrets.get(), &why);
    if (c->records) {
      SSL_free(c->ssl);
      c->ssl = nullptr;
    }
  }
  c->secrets.reset();
  (c->records ? on_records_ : on_openssl_)++;
  c->state = Conn::kOpen;
  handshakes_--;
  ResumeAccepting();
  churn_++;
  c->want_write = false;
  c->opened = true;
  c->last_read_ms = NowMs();
  {
    std::lock_guard<std::mutex> lock(mu_);
    live_.insert(c->id);
  }
  Emit(EventKind::kOpened, c->id, c->remote);
  return true;
}

// Reads until the socket has nothing more; delivers each complete line. False when the connection is gone.
bool Server::ReadAll(Conn* c) {
  char buf[16384];
  if (c->state == Conn::kEnding) {
    // Our close_notify and FIN are out: what the agent still sends is dropped unread, until its FIN.
    for (;;) {
      ssize_t r = recv(c->fd, buf, sizeof buf, 0);
      if (r > 0) continue;
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) return true;
      Destroy(c, c->end_reason);
      return false;
    }
  }
  if (c->records) return ReadRecords(c);
  for (;;) {
    size_t got = 0;
    ERR_clear_error();
    int r = SSL_read_ex(c->ssl, buf, sizeof buf, &got);
    if (r != 1) {
      int e = SSL_get_error(c->ssl, r);
      if (e == SSL_ERROR_WANT_READ) break;
      if (e == SSL_ERROR_WANT_WRITE) {
        c->want_write = true;
        break;
      }
      std::string why;
      if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0))
        why = "closed by the agent";
      else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        why = std::string("read: ") + strerror(errno);
      else
        why = "TLS error: " + SslErrors();
      Destroy(c, why);
      return false;
    }
    c->last_read_ms = NowMs();
    if (!Lines(c, buf, got)) return false;
  }
  return true;
}

// Reads and opens records until the socket has nothing more (a connection with records).
bool Server::ReadRecords(Conn* c) {
  char buf[16384];
  for (;;) {
    ssize_t r = recv(c->fd, buf, sizeof buf, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      Destroy(c, std::string("read: ") + strerror(errno));
      return false;
    }
    if (r == 0) {
      Destroy(c, "closed by the agent");
      return false;
    }
    c->last_read_ms = NowMs();
    c->wire_in.append(buf, size_t(r));
    std::string plain, why;
    Tls13Records::Opened opened = c->records->Open(&c->wire_in, &plain, &c->wire_out, &why);
    if (opened == Tls13Records::Opened::kError) {
      Destroy(c, "TLS error: " + why);
      return false;
    }
    if (!plain.empty() && !Lines(c, plain.data(), plain.size())) return false;
    if (opened == Tls13Records::Opened::kPeerClosed) {
      Destroy(c, "closed by the agent");
      return false;
    }
    Release(c->wire_in);
  }
  return true;
}

// Delivers each complete line of what was read (a ping is answered here). False when the connection is gone.
bool Server::Lines(Conn* c, const char* data, size_t n) {
  size_t start = 0;
  size_t scan_from = c->in.size();
  c->in.append(data, n);
  for (;;) {
    size_t nl = c->in.find('\n', scan_from);
    if (nl == std::string::npos) break;
    size_t len = nl - start;
    if (len > 0 && c->in[nl - 1] == '\r') len--;
    if (len == o_.ping_line.size() && c->in.compare(start, len, o_.ping_line) == 0) {
      c->out.append(o_.pong_line).push_back('\n');
    } else if (len > 0 && c->in.find_first_not_of(" \t", start) < start + len) {
      Emit(EventKind::kLine, c->id, c->in.substr(start, len));
    }
    start = nl + 1;
    scan_from = start;
  }
  if (start > 0) c->in.erase(0, start);
  if (c->in.size() > o_.max_line_bytes) {
    Destroy(c, "a frame larger than " + std::to_string(o_.max_line_bytes) + " bytes");
    return false;
  }
  Release(c->in);
  return true;
}

// Writes what is queued. False when the connection is gone.
bool Server::Flush(Conn* c) {
  if (c->state == Conn::kHandshake) return true;
  if (c->records && !FlushRecords(c)) return false;
  while (!c->records && c->out_off < c->out.size()) {
    size_t wrote = 0;
    ERR_clear_error();
    int r = SSL_write_ex(c->ssl, c->out.data() + c->out_off, c->out.size() - c->out_off, &wrote);
    if (r != 1) {
      int e = SSL_get_error(c->ssl, r);
      if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
        c->want_write = e == SSL_ERROR_WANT_WRITE;
        return true;
      }
      Destroy(c, e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 ? std::string("write: ") + strerror(errno)
                                                                   : "TLS error: " + SslErrors());
      return false;
    }
    c->out_off += wrote;
  }
  if (c->want_write && c->records) return true;  // records still to write
  c->want_write = false;
  c->out.clear();
  c->out_off = 0;
  Release(c->out);
  if (c->end_queued && !c->shut) BeginEnd(c);
  return true;
}

// Seals what is queued into records (up to kSealAhead bytes of them at a time) and writes them. False when
// the connection is gone; c->want_write when the socket took less.
bool Server::FlushRecords(Conn* c) {
  constexpr size_t kSealAhead = 4 * Tls13Records::kMaxPlain;
  c->want_write = false;
  for (;;) {
    if (c->wire_off == c->wire_out.size()) {
      c->wire_out.clear();
      c->wire_off = 0;
    }
    while (c->out_off < c->out.size() && c->wire_out.size() - c->wire_off < kSealAhead) {
      size_t n = std::min(Tls13Records::kMaxPlain, c->out.size() - c->out_off);
      std::string why;
      if (!c->records->Seal(c->out.data() + c->out_off, n, &c->wire_out, &why)) {
        Destroy(c, "TLS error: " + why);
        return false;
      }
      c->out_off += n;
    }
    if (c->wire_off == c->wire_out.size()) break;
    ssize_t w = send(c->fd, c->wire_out.data() + c->wire_off, c->wire_out.size() - c->wire_off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        c->want_write = true;
        return true;
      }
      Destroy(c, std::string("write: ") + strerror(errno));
      return false;
    }
    c->wire_off += size_t(w);
  }
  Release(c->wire_out);
  return true;
}

// A best-effort close_notify (the socket is about to be shut or closed).
void Server::SendCloseNotify(Conn* c) {
  ERR_clear_error();
  if (!c->records) {
    SSL_shutdown(c->ssl);
    ERR_clear_error();
    return;
  }
  std::string record, why;
  if (c->wire_off == c->wire_out.size() && c->records->SealCloseNotify(&record, &why))
    (void)!send(c->fd, record.data(), record.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

// The queue is out: close_notify and FIN, then wait (a little) for the agent's end so that nothing it sent
// turns our close into a reset that could destroy what we wrote.
void Server::BeginEnd(Conn* c) {
  c->shut = true;
  c->state = Conn::kEnding;
  c->since_ms = NowMs();
  SendCloseNotify(c);
  shutdown(c->fd, SHUT_WR);
}

void Server::PauseAccepting() {
  if (!listening_) return;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
  listening_ = false;
}

void Server::ResumeAccepting() {
  if (listening_ || stopping_ || handshakes_ >= kMaxHandshakes / 2) return;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;
  listening_ = epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) == 0;
}

void Server::UpdateInterest(Conn* c) {
  uint32_t want = uint32_t(EPOLLIN | EPOLLRDHUP) | (c->want_write ? uint32_t(EPOLLOUT) : 0u);
  if (want == c->interest) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c->id;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->fd, &ev);
  c->interest = want;
}

void Server::Destroy(Conn* c, const std::string& reason) {
  if (c->state == Conn::kHandshake) handshakes_--;
  else (c->records ? on_records_ : on_openssl_)--;
  churn_++;
  ResumeAccepting();
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  if (c->ssl) SSL_free(c->ssl);
  ERR_clear_error();
  close(c->fd);
  conns_.erase(c->id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    live_.erase(c->id);
  }
  if (c->opened) Emit(EventKind::kClosed, c->id, reason);
  delete c;
}

void Server::RunCommands() {
  std::vector<Command> cmds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cmds.swap(commands_);
  }
  std::vector<uint32_t> touched;
  for (Command& cmd : cmds) {
    auto it = conns_.find(cmd.id);
    if (it == conns_.end()) continue;
    Conn* c = it->second;
    if (c->state != Conn::kOpen || c->end_queued) continue;
    if (cmd.kind == Command::kEnd) {
      c->end_queued = true;
    } else {
      if (c->out.size() - c->out_off + cmd.line.size() > o_.max_queue_bytes) {
        Destroy(c, "more than " + std::to_string(o_.max_queue_bytes) + " bytes queued (the agent is not reading)");
        continue;
      }
      if (c->out.empty()) c->out.swap(cmd.line);
      else c->out.append(cmd.line);
    }
    touched.push_back(cmd.id);
  }
  for (uint32_t id : touched) {
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;
    if (Flush(it->second)) UpdateInterest(it->second);
  }
}

void Server::Sweep(int64_t now) {
  last_sweep_ms_ = now;
  ResumeAccepting();
  std::vector<std::pair<Conn*, std::string>> dead;
  for (auto& [id, c] : conns_) {
    if (c->state == Conn::kHandshake && now - c->since_ms > kHandshakeTimeoutMs)
      dead.push_back({c, "no TLS handshake within " + std::to_string(kHandshakeTimeoutMs) + " ms"});
    else if (c->state == Conn::kEnding && now - c->since_ms > kEndingGraceMs)
      dead.push_back({c, c->end_reason});
    else if (c->state == Conn::kOpen && now - c->last_read_ms > o_.idle_timeout_ms)
      dead.push_back({c, "nothing read for " + std::to_string(o_.idle_timeout_ms) + " ms"});
  }
  for (auto& [c, why] : dead) Destroy(c, why);
  if (handshakes_ == 0 && churn_ >= kTrimAfterChurn && now - last_trim_ms_ >= kTrimEveryMs) {
    malloc_trim(0);
    churn_ = 0;
    last_trim_ms_ = now;
  }
}

}  // namespace kstreams::feed
