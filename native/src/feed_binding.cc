// JS binding of the feed transport (declared for TypeScript in native/lib/raw.ts as FeedWire):
//   new FeedWire(options, onEvents)  listens at once (throws on a bad address, key or certificate)
//   .port  .send(id, line) -> bool  .end(id)  .setTls(keyPem, certPem)  .close()
// onEvents(events) gets batches of [kind, id, data] (kinds in feed/feed_server.h); after close() the batch
// with the stopped event is the last, and the object holds no thread, socket or reference to onEvents.
#include <napi.h>

#include <cmath>
#include <memory>

#include "errors.h"
#include "feed/feed_server.h"

namespace kstreams {

namespace {

bool ReadString(Napi::Env env, Napi::Object o, const char* key, std::string* out) {
  Napi::Value v = o.Get(key);
  if (!v.IsString()) {
    ArgumentError(env, std::string("options.") + key, "a string").ThrowAsJavaScriptException();
    return false;
  }
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

bool ReadInt(Napi::Env env, Napi::Object o, const char* key, bool required, double min, double max, double* out) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() && !required) return true;
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= min && d <= max) || std::floor(d) != d) {
    ArgumentError(env, std::string("options.") + key, "an integer " + std::to_string(int64_t(min)) + ".." + std::to_string(int64_t(max)))
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = d;
  return true;
}

class FeedWire : public Napi::ObjectWrap<FeedWire> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FeedWire",
                       {InstanceAccessor<&FeedWire::Port>("port"), InstanceMethod<&FeedWire::Send>("send"),
                        InstanceMethod<&FeedWire::End>("end"), InstanceMethod<&FeedWire::SetTls>("setTls"),
                        InstanceMethod<&FeedWire::Stats>("stats"), InstanceMethod<&FeedWire::Close>("close")});
  }

  FeedWire(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FeedWire>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject() || !info[1].IsFunction()) {
      ArgumentError(env, "new FeedWire(options, onEvents)", "an object and a function").ThrowAsJavaScriptException();
      return;
    }
    Napi::Object o = info[0].As<Napi::Object>();
    feed::Options opts;
    double port = 0, idle = 0, line = 0, queue = double(opts.max_queue_bytes);
    if (!ReadString(env, o, "host", &opts.host) || !ReadInt(env, o, "port", true, 0, 65535, &port) ||
        !ReadString(env, o, "keyPem", &opts.key_pem) || !ReadString(env, o, "certPem", &opts.cert_pem) ||
        !ReadString(env, o, "alpn", &opts.alpn) || !ReadString(env, o, "pingLine", &opts.ping_line) ||
        !ReadString(env, o, "pongLine", &opts.pong_line) || !ReadInt(env, o, "idleTimeoutMs", true, 1, 86400000, &idle) ||
        !ReadInt(env, o, "maxLineBytes", true, 1, 1 << 30, &line) || !ReadInt(env, o, "maxQueueBytes", false, 1, 1 << 30, &queue))
      return;
    Napi::Value records = o.Get("tlsRecords");
    if (!records.IsUndefined() && !records.IsBoolean()) {
      ArgumentError(env, "options.tlsRecords", "a boolean").ThrowAsJavaScriptException();
      return;
    }
    if (records.IsBoolean()) opts.tls_records = records.As<Napi::Boolean>().Value();
    opts.port = int(port);
    opts.idle_timeout_ms = int64_t(idle);
    opts.max_line_bytes = size_t(line);
    opts.max_queue_bytes = size_t(queue);
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "kstreams-feed", 0, 1);
    std::string error;
    server_ = feed::Server::Start(
        std::move(opts), [this] { tsfn_.NonBlockingCall([this](Napi::Env env, Napi::Function fn) { Deliver(env, fn); }); },
        &error);
    if (!server_) {
      tsfn_.Release();
      CodedError(env, "EKSTREAMS_FEED", error).ThrowAsJavaScriptException();
    }
  }

  ~FeedWire() override { server_.reset(); }  // an environment ending while it runs: stop and join here

 private:
  void Deliver(Napi::Env env, Napi::Function fn) {
    if (!server_) return;
    std::vector<feed::Event> events = server_->TakeEvents();
    if (events.empty()) return;
    Napi::HandleScope scope(env);
    Napi::Array batch = Napi::Array::New(env, events.size());
    bool stopped = false;
    for (size_t i = 0; i < events.size(); i++) {
      feed::Event& e = events[i];
      Napi::Array item = Napi::Array::New(env, 3);
      item.Set(uint32_t(0), Napi::Number::New(env, double(e.kind)));
      item.Set(uint32_t(1), Napi::Number::New(env, double(e.id)));
      item.Set(uint32_t(2), Napi::String::New(env, e.data));
      batch.Set(uint32_t(i), item);
      stopped = stopped || e.kind == feed::EventKind::kStopped;
    }
    if (stopped && !released_) {
      // The thread ends right after this event: join it and let go of onEvents before JS hears of it.
      server_->Join();
      released_ = true;
      tsfn_.Release();
    }
    fn.Call({batch});
  }

  Napi::Value Port(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), server_ ? server_->port() : 0); }

  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsNumber() || !info[1].IsString()) {
      ArgumentError(env, "send(id, line)", "a number and a string").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    bool ok = server_ && server_->Send(info[0].As<Napi::Number>().Uint32Value(), info[1].As<Napi::String>().Utf8Value());
    return Napi::Boolean::New(env, ok);
  }

  void End(const Napi::CallbackInfo& info) {
    if (!info[0].IsNumber()) return ArgumentError(info.Env(), "end(id)", "a number").ThrowAsJavaScriptException();
    if (server_) server_->End(info[0].As<Napi::Number>().Uint32Value());
  }

  void SetTls(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString() || !info[1].IsString())
      return ArgumentError(env, "setTls(keyPem, certPem)", "two strings").ThrowAsJavaScriptException();
    std::string error;
    if (!server_ || !server_->SetTls(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::String>().Utf8Value(), &error))
      CodedError(env, "EKSTREAMS_FEED", server_ ? error : "the feed server is closed").ThrowAsJavaScriptException();
  }

  // {handshakes, records, openssl}: connections in their handshake, and open ones by who does their records.
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    feed::Server::Stats st = server_ ? server_->stats() : feed::Server::Stats{0, 0, 0};
    out.Set("handshakes", Napi::Number::New(env, st.handshakes));
    out.Set("records", Napi::Number::New(env, st.records));
    out.Set("openssl", Napi::Number::New(env, st.openssl));
    return out;
  }

  void Close(const Napi::CallbackInfo&) {
    if (server_) server_->Close();
  }

  std::unique_ptr<feed::Server> server_;
  Napi::ThreadSafeFunction tsfn_;
  bool released_ = false;
};

}  // namespace

Napi::Object InitFeed(Napi::Env env, Napi::Object exports) {
  exports.Set("FeedWire", FeedWire::Define(env));
  return exports;
}

}  // namespace kstreams
