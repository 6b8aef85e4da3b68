// JS binding of the stream engine (declared for TypeScript in native/lib/raw.ts). Exports:
//   engineStart(config) -> { handle, listenHost, listenPort, listenerFd, pipeSize }
//   engineStats(handle) -> EngineStats
//   engineUpdate(handle, settings) -> effective pipe size (settings for new connections)
//   engineDrain(handle, timeoutMs) -> Promise<DrainResult>   (off the JS thread)
//   engineStop(handle) -> Promise<DrainResult>               (resets live connections; off the JS thread)
//   samplingBucket(src, dst) -> 0..9999      (src, dst: {host, port})
// The handle is an External; if it is collected (or the environment ends) while running, the engine is
// stopped there, so worker threads never outlive what started them.
#include <napi.h>

#include <cmath>
#include <memory>

#include "engine/engine.h"
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

bool ReadInteger(Napi::Env env, Napi::Object o, const std::string& prefix, const char* key, bool required, double min,
                 double max, double* out);

// mirrors[i].file: {path, responses?, maxBytes?, maxConnectionBytes?} (a capture; docs/capture.md).
bool ReadCapture(Napi::Env env, Napi::Value v, const std::string& name, engine::MirrorTarget* t) {
  if (!v.IsObject()) {
    ArgumentError(env, name, "an object {path, responses?, maxBytes?, maxConnectionBytes?}").ThrowAsJavaScriptException();
    return false;
  }
  Napi::Object o = v.As<Napi::Object>();
  auto spec = std::make_shared<engine::CaptureSpec>();
  if (!o.Get("path").IsString()) {
    ArgumentError(env, name + ".path", "an absolute directory path").ThrowAsJavaScriptException();
    return false;
  }
  spec->dir = o.Get("path").As<Napi::String>().Utf8Value();
  if (spec->dir.empty() || spec->dir[0] != '/') {
    ArgumentError(env, name + ".path", "an absolute directory path, got '" + spec->dir + "'").ThrowAsJavaScriptException();
    return false;
  }
  spec->responses = o.Get("responses").ToBoolean();
  double max = 0, perConn = 0;
  if (!ReadInteger(env, o, name + ".", "maxBytes", false, 0, double(1ull << 50), &max)) return false;
  if (!ReadInteger(env, o, name + ".", "maxConnectionBytes", false, 0, double(1ull << 50), &perConn)) return false;
  spec->maxBytes = uint64_t(max);
  spec->maxConnectionBytes = uint64_t(perConn);
  t->file = spec;
  return true;
}

bool ReadMirrors(Napi::Env env, Napi::Value v, engine::Settings* settings) {
  std::vector<engine::MirrorTarget>* out = &settings->mirrors;
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
    Napi::Value file = o.Get("file");
    if (!file.IsUndefined()) {
      if (!ReadCapture(env, file, name + ".file", &t)) return false;
    } else if (!ReadEndpoint(env, o, name, &t.address)) {
      return false;
    }
    Napi::Value pct = o.Get("samplingPercent");
    double p = pct.IsNumber() ? pct.As<Napi::Number>().DoubleValue() : -1;
    if (!(p >= 0 && p <= 100)) {
      ArgumentError(env, name + ".samplingPercent", "a number 0..100").ThrowAsJavaScriptException();
      return false;
    }
    t.samplingPercent = p;
    t.compareResponses = o.Get("compareResponses").ToBoolean();
    out->push_back(t);
  }
  return true;
}

bool ReadInteger(Napi::Env env, Napi::Object o, const std::string& prefix, const char* key, bool required, double min,
                 double max, double* out) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() && !required) return true;
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= min && d <= max && std::floor(d) == d)) {
    std::string range = min == 1 ? "a positive integer" : "an integer " + std::to_string(uint64_t(min)) + "..";
    if (min != 1) range += std::to_string(uint64_t(max));
    ArgumentError(env, prefix + key, range).ThrowAsJavaScriptException();
    return false;
  }
  *out = d;
  return true;
}

bool ReadPositive(Napi::Env env, Napi::Object o, const char* key, bool required, uint32_t* out) {
  double d = *out;
  if (!ReadInteger(env, o, "config.", key, required, 1, 2147483647, &d)) return false;
  *out = uint32_t(d);
  return true;
}

// settings.transform: {mirror, primary, ops: [{kind, a, b, with}], program?: {elf, section?, name?}}, as
// native/lib/transform.ts encodes spec.transform. Absent or null: no transform.
bool ReadBytes(Napi::Env env, Napi::Value v, const std::string& name, std::string* out) {
  if (v.IsUndefined()) return true;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ArgumentError(env, name, "a Uint8Array").ThrowAsJavaScriptException();
    return false;
  }
  Napi::Uint8Array a = v.As<Napi::Uint8Array>();
  out->assign(reinterpret_cast<const char*>(a.Data()), a.ByteLength());
  return true;
}

bool ReadTransform(Napi::Env env, Napi::Value v, const std::string& prefix, engine::Settings* settings) {
  if (v.IsUndefined() || v.IsNull()) return true;
  if (!v.IsObject()) {
    ArgumentError(env, prefix + "transform", "an object").ThrowAsJavaScriptException();
    return false;
  }
  Napi::Object o = v.As<Napi::Object>();
  auto spec = std::make_shared<engine::TransformSpec>();
  spec->mirror = o.Get("mirror").ToBoolean();
  spec->primary = o.Get("primary").ToBoolean();
  double hold = spec->holdMs;
  if (!ReadInteger(env, o, prefix + "transform.", "holdMs", false, 0, 3600000, &hold)) return false;
  spec->holdMs = uint32_t(hold);
  Napi::Value ops = o.Get("ops");
  if (!ops.IsArray()) {
    ArgumentError(env, prefix + "transform.ops", "an array").ThrowAsJavaScriptException();
    return false;
  }
  Napi::Array arr = ops.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string name = prefix + "transform.ops[" + std::to_string(i) + "]";
    if (!arr.Get(i).IsObject()) {
      ArgumentError(env, name, "an object").ThrowAsJavaScriptException();
      return false;
    }
    Napi::Object op = arr.Get(i).As<Napi::Object>();
    engine::TransformOp t;
    double kind = 0, with = '*';
    if (!ReadInteger(env, op, name + ".", "kind", true, 1, 3, &kind)) return false;
    if (!ReadInteger(env, op, name + ".", "with", false, 0, 255, &with)) return false;
    t.kind = uint8_t(kind);
    t.with = uint8_t(with);
    if (!ReadBytes(env, op.Get("a"), name + ".a", &t.a) || !ReadBytes(env, op.Get("b"), name + ".b", &t.b)) return false;
    spec->ops.push_back(std::move(t));
  }
  Napi::Value prog = o.Get("program");
  if (!prog.IsUndefined() && !prog.IsNull()) {
    if (!prog.IsObject()) {
      ArgumentError(env, prefix + "transform.program", "an object").ThrowAsJavaScriptException();
      return false;
    }
    Napi::Object p = prog.As<Napi::Object>();
    if (!ReadBytes(env, p.Get("elf"), prefix + "transform.program.elf", &spec->programElf)) return false;
    if (p.Get("section").IsString()) spec->programSection = p.Get("section").As<Napi::String>().Utf8Value();
    if (p.Get("name").IsString()) spec->programName = p.Get("name").As<Napi::String>().Utf8Value();
  }
  settings->transform = spec;
  return true;
}

// The live settings (engineStart's config carries them too).
bool ReadSettings(Napi::Env env, Napi::Object o, const std::string& prefix, engine::Settings* out) {
  if (!ReadMirrors(env, o.Get("mirrors"), out)) return false;
  double pipe = 0, turn = 0, buffer = 0;
  if (!ReadInteger(env, o, prefix, "pipeSize", true, 1, 2147483647, &pipe)) return false;
  if (!ReadInteger(env, o, prefix, "turnTimeoutMs", true, 0, 3600000, &turn)) return false;
  if (!ReadInteger(env, o, prefix, "mirrorBufferSize", true, 1, 1 << 30, &buffer)) return false;
  out->pipeSize = uint32_t(pipe);
  out->turnTimeoutMs = uint32_t(turn);
  out->mirrorBufferSize = uint32_t(buffer);
  return ReadTransform(env, o.Get("transform"), prefix, out);
}

// A transform that could not be loaded carries our code and the verifier's log; the rest is an errno.
void ThrowStartError(Napi::Env env, const engine::StartError& error) {
  if (!error.code.empty()) {
    Napi::Error e = CodedError(env, error.code.c_str(), error.what);
    e.Set("log", Napi::String::New(env, error.log));
    e.ThrowAsJavaScriptException();
    return;
  }
  ErrnoError(env, error.err, error.syscall.c_str(), error.what).ThrowAsJavaScriptException();
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
  } else if (up.IsString() && up.As<Napi::String>().Utf8Value() == "none") {
    cfg.recorder = true;
    double gap = cfg.recorderTurnGapMs;
    if (!ReadInteger(env, o, "config.", "turnGapMs", false, 0, 3600000, &gap)) return env.Undefined();
    cfg.recorderTurnGapMs = uint32_t(gap);
  } else if (up.IsObject()) {
    if (!ReadEndpoint(env, up, "config.upstream", &cfg.upstream)) return env.Undefined();
  } else {
    ArgumentError(env, "config.upstream", "{host, port}, 'original-destination' or 'none'").ThrowAsJavaScriptException();
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
  if (!ReadSettings(env, o, "config.", &cfg.settings)) return env.Undefined();
  if (!ReadPositive(env, o, "mirrorConnectTimeoutMs", true, &cfg.mirrorConnectTimeoutMs)) return env.Undefined();
  double budget = double(cfg.mirrorBufferBudget);
  if (!ReadInteger(env, o, "config.", "mirrorBufferBudget", false, 0, 1ull << 40, &budget)) return env.Undefined();
  cfg.mirrorBufferBudget = uint64_t(budget);
  if (!ReadPositive(env, o, "threads", false, &cfg.threads)) return env.Undefined();
  if (cfg.threads > 64) {
    ArgumentError(env, "config.threads", "at most 64").ThrowAsJavaScriptException();
    return env.Undefined();
  }

  engine::StartError error;
  std::unique_ptr<Engine> started = Engine::Start(cfg, &error);
  if (!started) {
    ThrowStartError(env, error);
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
  o.Set("setupFailures", double(s.setupFailures));
  o.Set("connectionsReset", double(s.connectionsReset));
  o.Set("resetFailures", double(s.resetFailures));
  o.Set("acceptPauses", double(s.acceptPauses));
  o.Set("pipeResizeFailures", double(s.pipeResizeFailures));
  o.Set("bytesClientToApp", double(s.bytesClientToApp));
  o.Set("bytesAppToClient", double(s.bytesAppToClient));
  o.Set("pipesInUse", double(s.pipesInUse));
  o.Set("pipesPooled", double(s.pipesPooled));
  o.Set("pipeBytesInUse", double(s.pipeBytesInUse));
  o.Set("pipeBytesPooled", double(s.pipeBytesPooled));
  o.Set("mirrorBufferInUse", double(s.mirrorBufferInUse));
  o.Set("mirrorBufferBudget", double(s.mirrorBufferBudget));
  o.Set("mirrorBufferDenied", double(s.mirrorBufferDenied));
  o.Set("workerFailures", double(s.workerFailures));
  o.Set("transformFailures", double(s.transformFailures));
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
    to.Set("turnWaitsExpired", double(t.turnWaitsExpired));
    to.Set("responsesCompared", double(t.responsesCompared));
    to.Set("responsesDiverged", double(t.responsesDiverged));
    to.Set("transformFailures", double(t.transformFailures));
    if (t.file) {
      Napi::Object c = Napi::Object::New(env);
      c.Set("session", t.captureSession);
      c.Set("responseBytes", double(t.responseBytes));
      c.Set("connectionsNotRecorded", double(t.connectionsNotRecorded));
      c.Set("cutsFull", double(t.capturesCutFull));
      c.Set("cutsSlow", double(t.capturesCutSlow));
      c.Set("cutsDisk", double(t.capturesCutDisk));
      c.Set("holds", double(t.captureHolds));
      c.Set("bytesWrittenBack", double(t.bytesWrittenBack));
      to.Set("capture", c);
    }
    targets.Set(uint32_t(i), to);
  }
  o.Set("targets", targets);
  return o;
}

Napi::Value Update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EngineBox* box = Unbox(info);
  if (!box) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsObject()) {
    ArgumentError(env, "settings", "an EngineSettings object").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  engine::Settings settings;
  if (!ReadSettings(env, info[1].As<Napi::Object>(), "settings.", &settings)) return env.Undefined();
  engine::StartError error;
  if (!box->engine->Update(settings, &error)) {
    ThrowStartError(env, error);
    return env.Undefined();
  }
  return Napi::Number::New(env, box->engine->pipeSize());
}

// Drain and stop block until the workers are joined: off the JS thread.
class EndWorker : public Napi::AsyncWorker {
 public:
  EndWorker(Napi::Env env, std::shared_ptr<Engine> engine, bool drain, uint32_t timeoutMs)
      : Napi::AsyncWorker(env),
        engine_(std::move(engine)),
        drain_(drain),
        timeoutMs_(timeoutMs),
        deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { result_ = drain_ ? engine_->Drain(timeoutMs_) : engine_->Stop(); }
  void OnOK() override {
    Napi::Object r = Napi::Object::New(Env());
    r.Set("drained", double(result_.drained));
    r.Set("reset", double(result_.reset));
    r.Set("ms", double(result_.ms));
    deferred_.Resolve(r);
  }

 private:
  std::shared_ptr<Engine> engine_;
  bool drain_;
  uint32_t timeoutMs_;
  engine::DrainResult result_;
  Napi::Promise::Deferred deferred_;
};

Napi::Value Drain(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EngineBox* box = Unbox(info);
  if (!box) return env.Undefined();
  double ms = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
  if (!(ms >= 0 && ms <= 86400000 && std::floor(ms) == ms)) {
    ArgumentError(env, "timeoutMs", "an integer 0..86400000").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* worker = new EndWorker(env, box->engine, true, uint32_t(ms));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value Stop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EngineBox* box = Unbox(info);
  if (!box) return env.Undefined();
  auto* worker = new EndWorker(env, box->engine, false, 0);
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
  exports.Set("engineUpdate", Napi::Function::New(env, Update, "engineUpdate"));
  exports.Set("engineDrain", Napi::Function::New(env, Drain, "engineDrain"));
  exports.Set("engineStop", Napi::Function::New(env, Stop, "engineStop"));
  exports.Set("samplingBucket", Napi::Function::New(env, Bucket, "samplingBucket"));
  return exports;
}

}  // namespace kstreams
