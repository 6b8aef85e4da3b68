// The agent feed's TLS transport (operator/src/feed/wire.ts is its contract): one epoll thread accepts, does
// the TLS handshakes, reads lines and writes queued ones for every agent connection. It answers the agents'
// pings itself, closes connections idle for too long, and hands the JS thread batches of events.
//
// Memory is the point (docs/adr/0008): after a TLS 1.3 handshake a connection keeps no SSL object, only its
// record state (tls13_records.h, about 200 bytes) and empty strings; one that negotiated TLS 1.2 keeps an SSL
// object whose buffers are released while nothing is pending (SSL_MODE_RELEASE_BUFFERS), about 13.6 KiB. No
// session cache, no tickets. Node's tls keeps ~27 KiB per connection.
//
// OpenSSL is the one inside the node binary (its symbols are exported; the addon links no libssl), so the
// process has one OpenSSL; its error queue is per thread and the feed thread clears its own.
#pragma once

#include <stdint.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

typedef struct ssl_ctx_st SSL_CTX;

namespace kstreams::feed {

struct Options {
  std::string host;
  int port = 0;
  std::string key_pem;
  std::string cert_pem;
  std::string alpn;       // the one protocol accepted, e.g. "kstreams-feed/1"
  std::string ping_line;  // a line equal to this is answered with pong_line, never delivered
  std::string pong_line;
  int64_t idle_timeout_ms = 45000;
  size_t max_line_bytes = 8 << 20;
  size_t max_queue_bytes = 32 << 20;  // unsent bytes per connection before it is closed (an agent not reading)
  bool tls_records = true;  // TLS 1.3 connections leave their SSL object after the handshake (tls13_records.h)
};

enum class EventKind : uint8_t { kOpened = 0, kLine = 1, kClosed = 2, kStopped = 3 };

struct Event {
  EventKind kind;
  uint32_t id;
  std::string data;  // opened: the peer address; line: the line; closed: why
};

class Server {
 public:
  // `deliver` is called on the feed thread whenever events are waiting and the previous call was taken (see
  // TakeEvents): it must only schedule the JS side, which then calls TakeEvents.
  static std::unique_ptr<Server> Start(Options options, std::function<void()> deliver, std::string* error);
  ~Server();  // stops and joins the thread if Close was not called

  int port() const { return port_; }

  // The JS thread's calls. Send/End return false for a connection that is gone or ending.
  bool Send(uint32_t id, std::string line);
  void End(uint32_t id);
  bool SetTls(const std::string& key_pem, const std::string& cert_pem, std::string* error);
  // Closes every connection (each gets its closed event) and stops the thread; a kStopped event is last.
  void Close();
  // Waits for the thread to end (after Close, once kStopped was delivered).
  void Join();

  std::vector<Event> TakeEvents();

  struct Stats {
    uint32_t handshakes;  // connections in their handshake
    uint32_t records;     // open connections whose TLS records the feed seals and opens itself
    uint32_t openssl;     // open connections that keep their SSL object
  };
  Stats stats() const { return {uint32_t(handshakes_.load()), on_records_.load(), on_openssl_.load()}; }

 private:
  struct Conn;
  struct Command {
    enum Kind : uint8_t { kSend, kEnd } kind;
    uint32_t id;
    std::string line;
  };

  Server() = default;
  void Run();
  void Accept();
  void Service(Conn* c);
  bool Handshake(Conn* c);
  bool ReadAll(Conn* c);
  bool ReadRecords(Conn* c);
  bool Lines(Conn* c, const char* data, size_t n);
  bool Flush(Conn* c);
  bool FlushRecords(Conn* c);
  void SendCloseNotify(Conn* c);
  void BeginEnd(Conn* c);
  void Destroy(Conn* c, const std::string& reason);
  void UpdateInterest(Conn* c);
  void PauseAccepting();
  void ResumeAccepting();
  void RunCommands();
  void Sweep(int64_t now_ms);
  void Emit(EventKind kind, uint32_t id, std::string data);

  Options o_;
  int port_ = 0;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  bool listening_ = true;   // the listener is in the epoll set
  bool stopping_ = false;
  std::thread thread_;
  std::function<void()> deliver_;
  std::string alpn_wire_;  // the ALPN list as the TLS extension carries it (length-prefixed)

  std::mutex ctx_mu_;
  SSL_CTX* ctx_ = nullptr;  // new connections take a reference

  std::mutex mu_;  // guards everything below
  std::vector<Command> commands_;
  std::unordered_set<uint32_t> live_;  // opened and not ending: Send may queue
  std::vector<Event> events_;
  bool delivering_ = false;
  bool stop_ = false;

  // The feed thread's own.
  std::unordered_map<uint32_t, Conn*> conns_;
  uint32_t next_id_ = 1;
  int64_t last_sweep_ms_ = 0;
  std::atomic<size_t> handshakes_{0};  // connections in their handshake (read by stats())
  std::atomic<uint32_t> on_records_{0}, on_openssl_{0};
  uint32_t churn_ = 0;     // handshakes done and connections closed since the last malloc_trim
  int64_t last_trim_ms_ = 0;
};

}  // namespace kstreams::feed
