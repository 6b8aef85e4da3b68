// JS binding of the stream engine. Exports:
//   engineStart(config) -> { handle, listenHost, listenPort, listenerFd, pipeSize }
//   engineStats(handle) -> EngineStats
//   engineUpdateMirrors(handle, mirrors)
//   engineStop(handle) -> Promise<void>     (joins the workers off the JS thread)
//   samplingBucket(src, dst) -> 0..9999      (src, dst: {host, port})
// The handle is an External; if it is collected (or the environment ends) while running, the engine is
// stopped there, so worker threads never outlive what started them.
#include <napi.h>

#include <cmath>
#include <memory>

#include "engine.h"
#include "errors.h"

namespace kstreams {

namespace {

using engine::Engine;

struct EngineBox {
  std::shared_ptr<Engine> engine;
  napi_env env = nullptr;
  bool hookAdded = false;
};

void StopOnEnvCleanup(void* arg) {
  auto* box = static_cast<EngineBox*>(arg);
  box->hookAdded = false;
  if (box->engine) box->engine->Stop();
}

// Reads a {host, port} object; false (with a pending exception) when malformed.
bool ReadEndpoint(Napi::Env env, Napi::Value v, const std::string& name, engine::SockAddr* out) {
  if (!v.IsObject()) {
    ArgumentError(env, name, "an object {host, port}").ThrowAsJavaScriptException();
    return false;
  }
  Napi::Object o = v.As<Napi::Object>();
  Napi::Value host = o.Get("host"), port = o.Get("port");
  if (!host.IsString()) {
    ArgumentError(env, name + ".host", "a numeric IP address string").ThrowAsJavaScriptException();
    return false;
  }
  double p = port.IsNumber() ? port.As<Napi::Number>().DoubleValue() : -1;
  if (!(p >= 0 && p <= 65535 && std::floor(p) == p)) {
    ArgumentError(env, name + ".port", "an integer 0..65535").ThrowAsJavaScriptException();
    return false;
  }
  std::string h = host.As<Napi::String>().Utf8Value();
  if (!engine::ParseAddress(h, uint16_t(p), out)) {
    ArgumentError(env, name + ".host", "a numeric IPv4 or IPv6 address, got '" + h + "'").ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

bool ReadMirrors(Napi::Env env, Napi::Value v, std::vector<engine::MirrorTarget>* out) {
  if (!v.IsArray()) {
    ArgumentError(env, "mirrors", "an array of MirrorConfig").ThrowAsJavaScriptException();
    return false;
  }
  Napi::Array arr = v.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string name = "mirrors[" + std::to_string(i) + "]";
    Napi::Value item = arr.Get(i);
    if (!item.IsObject()) {
      ArgumentError(env, name, "an object").ThrowAsJavaScriptException();
      return false;
    }
    Napi::Object o = item.As<Napi::Object>();
    engine::MirrorTarget t;
    if (!o.Get("name").IsString()) {
      ArgumentError(env, name + ".name", "a string").ThrowAsJavaScriptException();
      return false;
    }
    t.name = o.Get("name").As<Napi::String>().Utf8Value();
    for (const auto& other : *out)
      if (other.name == t.name) {
        ArgumentError(env, name + ".name", "a name unique among mirrors, '" + t.name + "' repeats")
            .ThrowAsJavaScriptException();
        return false;
      }
    if (!ReadEndpoint(env, o, name, &t.address)) return false;
    Napi::Value pct = o.Get("samplingPercent");
    double p = pct.IsNumber() ? pct.As<Napi::Number>().DoubleValue() : -1;
    if (!(p >= 0 && p <= 100)) {
      ArgumentError(env, name + ".samplingPercent", "a number 0..100").ThrowAsJavaScriptException();
      return false;
    }
    t.samplingPercent = p;
    out->push_back(t);
  }
  return true;
}

bool ReadPositive(Napi::Env env, Napi::Object o, const char* key, bool required, uint32_t* out) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() && !required) return true;
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 1 && d <= 2147483647 && std::floor(d) == d)) {
    ArgumentError(env, std::string("config.") + key, "a positive integer").ThrowAsJavaScriptException();
    return false;
  }
  *out = uint32_t(d);
  return true;
}

EngineBox* Unbox(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    ArgumentError(info.Env(), "handle", "an engine handle from engineStart").ThrowAsJavaScriptException();
    return nullptr;
  }
  return info[0].As<Napi::External<EngineBox>>().Data();
}

Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) {
    ArgumentError(env, "config", "an EngineConfig object").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = info[0].As<Napi::Object>();
  engine::Config cfg;
  Napi::Value netns = o.Get("netnsPath");
  if (!netns.IsUndefined()) {
    if (!netns.IsString()) {
      ArgumentError(env, "config.netnsPath", "a path string").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    cfg.netnsPath = netns.As<Napi::String>().Utf8Value();
  }
  if (!o.Get("listen").IsUndefined() && !ReadEndpoint(env, o.Get("listen"), "config.listen", &cfg.listen))
    return env.Undefined();
  Napi::Value up = o.Get("upstream");
  if (up.IsString() && up.As<Napi::String>().Utf8Value() == "original-destination") {
    cfg.upstreamOriginalDestination = true;
  } else if (up.IsObject()) {
    if (!ReadEndpoint(env, up, "config.upstream", &cfg.upstream)) return env.Undefined();
  } else {
    ArgumentError(env, "config.upstream", "{host, port} or 'original-destination'").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // upstreamSources: exactly these (native/lib passes it always). upstreamSource alone: replaces the
  // default of its own family, like native/lib's sourcesPerFamily().
  Napi::Value srcs = o.Get("upstreamSources");
  Napi::Value src = o.Get("upstreamSource");
  if (!srcs.IsUndefined()) {
    if (!srcs.IsArray()) {
      ArgumentError(env, "config.upstreamSources", "an array of numeric IP address strings").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Array list = srcs.As<Napi::Array>();
    cfg.upstreamSources.clear();
    for (uint32_t i = 0; i < list.Length(); i++) {
      if (!list.Get(i).IsString()) {
        ArgumentError(env, "config.upstreamSources[" + std::to_string(i) + "]", "a numeric IP address string")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
      cfg.upstreamSources.push_back(list.Get(i).As<Napi::String>().Utf8Value());
    }
  } else if (!src.IsUndefined()) {
    engine::SockAddr a;
    std::string text = src.IsString() ? src.As<Napi::String>().Utf8Value() : "";
    if (!engine::ParseAddress(text, 0, &a)) {
      ArgumentError(env, "config.upstreamSource", "a numeric IP address string").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    for (std::string& s : cfg.upstreamSources) {
      engine::SockAddr d;
      if (engine::ParseAddress(s, 0, &d) && d.family() == a.family()) s = text;
    }
  }
  if (!ReadMirrors(env, o.Get("mirrors"), &cfg.mirrors)) return env.Undefined();
  if (!ReadPositive(env, o, "pipeSize", true, &cfg.pipeSize)) return env.Undefined();
  if (!ReadPositive(env, o, "mirrorConnectTimeoutMs", true, &cfg.mirrorConnectTimeoutMs)) return env.Undefined();
  if (!ReadPositive(env, o, "threads", false, &cfg.threads)) return env.Undefined();
  if (cfg.threads > 64) {
    ArgumentError(env, "config.threads", "at most 64").ThrowAsJavaScriptException();
    return env.Undefined();
  }

  engine::StartError error;
  std::unique_ptr<Engine> started = Engine::Start(cfg, &error);
  if (!started) {
    ErrnoError(env, error.err, error.syscall.c_str(), error.what).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* box = new EngineBox;
  box->engine = std::move(started);
  box->env = env;
  if (napi_add_env_cleanup_hook(env, StopOnEnvCleanup, box) == napi_ok) box->hookAdded = true;
  auto handle = Napi::External<EngineBox>::New(env, box, [](Napi::Env, EngineBox* b) {
    if (b->hookAdded) napi_remove_env_cleanup_hook(b->env, StopOnEnvCleanup, b);
    // Collected without stop(): stop here (joins; quick, the workers only wait on epoll).
    if (b->engine) b->engine->Stop();
    delete b;
  });
  Napi::Object result = Napi::Object::New(env);
  result.Set("handle", handle);
  result.Set("listenHost", engine::FormatHost(box->engine->listenAddress()));
  result.Set("listenPort", engine::Port(box->engine->listenAddress()));
  result.Set("listenerFd", box->engine->listenerFd());
  result.Set("pipeSize", box->engine->pipeSize());
  return result;
}

Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EngineBox* box = Unbox(info);
  if (!box) return env.Undefined();
  engine::Stats s = box->engine->Snapshot();
  Napi::Object o = Napi::Object::New(env);
  o.Set("connectionsAccepted", double(s.connectionsAccepted));
  o.Set("connectionsActive", double(s.connectionsActive));
  o.Set("connectionsClosed", double(s.connectionsClosed));
  o.Set("upstreamConnectFailures", double(s.upstreamConnectFailures));
  o.Set("acceptPauses", double(s.acceptPauses));
  o.Set("pipeResizeFailures", double(s.pipeResizeFailures));
  o.Set("bytesClientToApp", double(s.bytesClientToApp));
  o.Set("bytesAppToClient", double(s.bytesAppToClient));
  Napi::Array targets = Napi::Array::New(env, s.targets.size());
  for (size_t i = 0; i < s.targets.size(); i++) {
    const engine::TargetStats& t = s.targets[i];
    Napi::Object to = Napi::Object::New(env);
    to.Set("name", t.name);
    to.Set("connectionsMirrored", double(t.connectionsMirrored));
    to.Set("connectionsCut", double(t.connectionsCut));
    to.Set("connectFailures", double(t.connectFailures));
    to.Set("connectionsSkipped", double(t.connectionsSkipped));
    to.Set("connectionsActive", double(t.connectionsActive));
    to.Set("bytesMirrored", double(t.bytesMirrored));
    to.Set("bytesDropped", double(t.bytesDropped));
    targets.Set(uint32_t(i), to);
  }
  o.Set("targets", targets);
  return o;
}

Napi::Value UpdateMirrors(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EngineBox* box = Unbox(info);
  if (!box) return env.Undefined();
  std::vector<engine::MirrorTarget> mirrors;
  if (!ReadMirrors(env, info[1], &mirrors)) return env.Undefined();
  box->engine->UpdateMirrors(mirrors);
  return env.Undefined();
}

class StopWorker : public Napi::AsyncWorker {
 public:
  StopWorker(Napi::Env env, std::shared_ptr<Engine> engine)
      : Napi::AsyncWorker(env), engine_(std::move(engine)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { engine_->Stop(); }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

 private:
  std::shared_ptr<Engine> engine_;
  Napi::Promise::Deferred deferred_;
};

Napi::Value Stop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EngineBox* box = Unbox(info);
  if (!box) return env.Undefined();
  auto* worker = new StopWorker(env, box->engine);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value Bucket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  engine::SockAddr src, dst;
  if (info.Length() < 2 || !ReadEndpoint(env, info[0], "src", &src) || !ReadEndpoint(env, info[1], "dst", &dst))
    return env.Undefined();
  return Napi::Number::New(env, engine::SamplingBucket(src, dst));
}

}  // namespace

Napi::Object InitEngine(Napi::Env env, Napi::Object exports) {
  exports.Set("engineStart", Napi::Function::New(env, Start, "engineStart"));
  exports.Set("engineStats", Napi::Function::New(env, Stats, "engineStats"));
  exports.Set("engineUpdateMirrors", Napi::Function::New(env, UpdateMirrors, "engineUpdateMirrors"));
  exports.Set("engineStop", Napi::Function::New(env, Stop, "engineStop"));
  exports.Set("samplingBucket", Napi::Function::New(env, Bucket, "samplingBucket"));
  return exports;
}

}  // namespace kstreams
