// JS binding of the replayer (declared for TypeScript in native/lib/raw.ts). Exports:
//   replayStart(config, conns) -> handle       (the thread runs at once)
//   replayStats(handle) -> ReplayStats
//   replayCancel(handle)                        (resets what is open; the wait then resolves)
//   replayWait(handle) -> Promise<ReplayResult> (joins off the JS thread)
// conns[i]: {c2sPath, s2cPath?, responses, startNs, endNs?, turns: Float64Array [c2s, s2c, atNs]*, endC2s,
// endS2c, how: 'fin'|'rst'|'cut'}. If the handle is collected (or the environment ends) while running, the replay
// is cancelled and joined there.
#include <napi.h>

#include <string.h>

#include <algorithm>

#include <cmath>
#include <memory>

#include "errors.h"
#include "replay/replayer.h"

namespace kstreams {

namespace {

using replay::Replayer;

struct ReplayBox {
  std::shared_ptr<Replayer> replayer;
  napi_env env = nullptr;
  bool hookAdded = false;
};

void CancelOnEnvCleanup(void* arg) {
  auto* box = static_cast<ReplayBox*>(arg);
  box->hookAdded = false;
  if (box->replayer) {
    box->replayer->Cancel();
    box->replayer->Wait();
  }
}

bool Fail(Napi::Env env, const std::string& name, const std::string& expected) {
  ArgumentError(env, name, expected).ThrowAsJavaScriptException();
  return false;
}

bool ReadNumber(Napi::Env env, Napi::Object o, const std::string& prefix, const char* key, bool required, double min,
                double max, bool integer, double* out) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() && !required) return true;
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= min && d <= max) || (integer && std::floor(d) != d))
    return Fail(env, prefix + key, std::string(integer ? "an integer " : "a number ") + std::to_string(uint64_t(min)) + ".." +
                                       std::to_string(uint64_t(max)));
  *out = d;
  return true;
}

bool ReadString(Napi::Env env, Napi::Object o, const std::string& prefix, const char* key, bool required, std::string* out) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() && !required) return true;
  if (!v.IsString()) return Fail(env, prefix + key, "a string");
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

bool ReadConfig(Napi::Env env, Napi::Object o, replay::Config* cfg) {
  Napi::Value t = o.Get("target");
  if (!t.IsObject()) return Fail(env, "config.target", "an object {host, port}");
  Napi::Object to = t.As<Napi::Object>();
  std::string host;
  double port = 0;
  if (!ReadString(env, to, "config.target.", "host", true, &host)) return false;
  if (!ReadNumber(env, to, "config.target.", "port", true, 1, 65535, true, &port)) return false;
  if (!engine::ParseAddress(host, uint16_t(port), &cfg->target))
    return Fail(env, "config.target.host", "a numeric IPv4 or IPv6 address, got '" + host + "'");
  if (!ReadString(env, o, "config.", "netnsPath", false, &cfg->netnsPath)) return false;
  double speed = cfg->speed, conc = cfg->concurrency, loops = cfg->loops, answer = cfg->answerTimeoutMs, quiet = cfg->quietMs,
         connect = cfg->connectTimeoutMs, stall = cfg->stallTimeoutMs;
  if (!ReadNumber(env, o, "config.", "speed", true, 0, 1e6, false, &speed)) return false;
  if (!ReadNumber(env, o, "config.", "concurrency", false, 1, 65536, true, &conc)) return false;
  if (!ReadNumber(env, o, "config.", "loops", false, 1, 1e9, true, &loops)) return false;
  if (!ReadNumber(env, o, "config.", "answerTimeoutMs", false, 0, 3600000, true, &answer)) return false;
  if (!ReadNumber(env, o, "config.", "quietMs", false, 0, 60000, true, &quiet)) return false;
  if (!ReadNumber(env, o, "config.", "connectTimeoutMs", false, 1, 3600000, true, &connect)) return false;
  if (!ReadNumber(env, o, "config.", "stallTimeoutMs", false, 1, 3600000, true, &stall)) return false;
  cfg->speed = speed;
  cfg->concurrency = uint32_t(conc);
  cfg->loops = uint32_t(loops);
  cfg->answerTimeoutMs = uint32_t(answer);
  cfg->quietMs = uint32_t(quiet);
  cfg->connectTimeoutMs = uint32_t(connect);
  cfg->stallTimeoutMs = uint32_t(stall);
  cfg->compare = o.Get("compare").ToBoolean();
  return true;
}

bool ReadConns(Napi::Env env, Napi::Value v, std::vector<replay::ConnSpec>* out) {
  if (!v.IsArray()) return Fail(env, "conns", "an array");
  Napi::Array arr = v.As<Napi::Array>();
  out->reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string name = "conns[" + std::to_string(i) + "].";
    if (!arr.Get(i).IsObject()) return Fail(env, "conns[" + std::to_string(i) + "]", "an object");
    Napi::Object o = arr.Get(i).As<Napi::Object>();
    replay::ConnSpec c;
    if (!ReadString(env, o, name, "c2sPath", true, &c.c2sPath)) return false;
    if (!ReadString(env, o, name, "s2cPath", false, &c.s2cPath)) return false;
    c.responses = o.Get("responses").ToBoolean();
    double start = 0, endC2s = 0, endS2c = 0;
    if (!ReadNumber(env, o, name, "startNs", true, 0, 9007199254740991.0, true, &start)) return false;
    if (!ReadNumber(env, o, name, "endC2s", true, 0, 9007199254740991.0, true, &endC2s)) return false;
    if (!ReadNumber(env, o, name, "endS2c", true, 0, 9007199254740991.0, true, &endS2c)) return false;
    c.startNs = uint64_t(start);
    double endNs = -1;
    if (!ReadNumber(env, o, name, "endNs", false, 0, 9007199254740991.0, true, &endNs)) return false;
    // Never before its own open (clocks of two sessions): a connection cannot wait for itself.
    if (endNs >= 0) c.endNs = std::max(c.startNs, uint64_t(endNs));
    c.endC2s = uint64_t(endC2s);
    c.endS2c = uint64_t(endS2c);
    std::string how;
    if (!ReadString(env, o, name, "how", true, &how)) return false;
    if (how == "fin") c.how = replay::End::kFin;
    else if (how == "rst") c.how = replay::End::kRst;
    else if (how == "cut") c.how = replay::End::kCut;
    else return Fail(env, name + "how", "'fin', 'rst' or 'cut'");
    Napi::Value turns = o.Get("turns");
    if (!turns.IsTypedArray() || turns.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      return Fail(env, name + "turns", "a Float64Array of [c2s, s2c, atNs] triples");
    Napi::Float64Array t = turns.As<Napi::Float64Array>();
    if (t.ElementLength() % 3) return Fail(env, name + "turns", "a Float64Array of [c2s, s2c, atNs] triples");
    for (size_t j = 0; j + 2 < t.ElementLength(); j += 3) {
      replay::TurnSpec s;
      s.c2s = uint64_t(t[j]);
      s.s2c = uint64_t(t[j + 1]);
      s.atNs = uint64_t(t[j + 2]);
      if (s.c2s > c.endC2s || (j && s.c2s < c.turns.back().c2s))
        return Fail(env, name + "turns", "c2s offsets in order, within endC2s");
      c.turns.push_back(s);
    }
    out->push_back(std::move(c));
  }
  return true;
}

ReplayBox* Unbox(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    ArgumentError(info.Env(), "handle", "a replay handle from replayStart").ThrowAsJavaScriptException();
    return nullptr;
  }
  return info[0].As<Napi::External<ReplayBox>>().Data();
}

Napi::Object StatsObject(Napi::Env env, const replay::Stats& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("started", double(s.started));
  o.Set("replayed", double(s.replayed));
  o.Set("failed", double(s.failed));
  o.Set("active", double(s.active));
  o.Set("bytesSent", double(s.bytesSent));
  o.Set("bytesReceived", double(s.bytesReceived));
  o.Set("turns", double(s.turns));
  o.Set("turnWaitsExpired", double(s.turnWaitsExpired));
  o.Set("same", double(s.same));
  o.Set("differ", double(s.differ));
  o.Set("loop", double(s.loop));
  Napi::Object f = Napi::Object::New(env);
  for (int i = 0; i < replay::kFailureKinds; i++) f.Set(replay::FailureName(i), double(s.failures[i]));
  o.Set("failures", f);
  return o;
}

Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject()) {
    ArgumentError(env, "config", "a ReplayConfig object").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  replay::Config cfg;
  std::vector<replay::ConnSpec> conns;
  if (!ReadConfig(env, info[0].As<Napi::Object>(), &cfg)) return env.Undefined();
  if (!ReadConns(env, info[1], &conns)) return env.Undefined();
  replay::StartError error;
  std::unique_ptr<Replayer> started = Replayer::Start(std::move(cfg), std::move(conns), &error);
  if (!started) {
    ErrnoError(env, error.err, error.syscall.c_str(), error.what).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* box = new ReplayBox;
  box->replayer = std::move(started);
  box->env = env;
  if (napi_add_env_cleanup_hook(env, CancelOnEnvCleanup, box) == napi_ok) box->hookAdded = true;
  return Napi::External<ReplayBox>::New(env, box, [](Napi::Env, ReplayBox* b) {
    if (b->hookAdded) napi_remove_env_cleanup_hook(b->env, CancelOnEnvCleanup, b);
    if (b->replayer) {
      b->replayer->Cancel();
      b->replayer->Wait();
    }
    delete b;
  });
}

Napi::Value Stats(const Napi::CallbackInfo& info) {
  ReplayBox* box = Unbox(info);
  if (!box) return info.Env().Undefined();
  return StatsObject(info.Env(), box->replayer->Snapshot());
}

Napi::Value Cancel(const Napi::CallbackInfo& info) {
  ReplayBox* box = Unbox(info);
  if (box) box->replayer->Cancel();
  return info.Env().Undefined();
}

class WaitWorker : public Napi::AsyncWorker {
 public:
  WaitWorker(Napi::Env env, std::shared_ptr<Replayer> replayer)
      : Napi::AsyncWorker(env), replayer_(std::move(replayer)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { result_ = &replayer_->Wait(); }
  void OnOK() override {
    Napi::Env env = Env();
    const replay::Result& r = *result_;
    Napi::Object o = Napi::Object::New(env);
    o.Set("stats", StatsObject(env, r.stats));
    o.Set("ms", double(r.ns) / 1e6);
    o.Set("cancelled", r.cancelled);
    if (r.aborted) {
      o.Set("unreachable", ErrnoError(env, r.abortErr, r.abortSyscall.c_str(), "to the target").Value());
    }
    Napi::Array outs = Napi::Array::New(env, r.outcomes.size());
    for (size_t i = 0; i < r.outcomes.size(); i++) {
      const replay::Outcome& x = r.outcomes[i];
      Napi::Object c = Napi::Object::New(env);
      c.Set("conn", double(x.conn));
      c.Set("loop", double(x.loop));
      if (x.failure >= 0) {
        c.Set("failure", replay::FailureName(x.failure));
        if (x.err) {
          const char* code = strerrorname_np(x.err);
          c.Set("code", code ? code : "EUNKNOWN");
          c.Set("message", strerror(x.err));
          c.Set("syscall", x.syscall);
        }
      }
      c.Set("bytesSent", double(x.bytesSent));
      c.Set("bytesReceived", double(x.bytesReceived));
      c.Set("turnsSent", double(x.turnsSent));
      if (x.differs) {
        c.Set("differsAt", double(x.differsAt));
        c.Set("got", Napi::Buffer<char>::Copy(env, x.got.data(), x.got.size()));
        c.Set("want", Napi::Buffer<char>::Copy(env, x.want.data(), x.want.size()));
      }
      outs.Set(uint32_t(i), c);
    }
    o.Set("outcomes", outs);
    deferred_.Resolve(o);
  }

 private:
  std::shared_ptr<Replayer> replayer_;
  const replay::Result* result_ = nullptr;
  Napi::Promise::Deferred deferred_;
};

Napi::Value Wait(const Napi::CallbackInfo& info) {
  ReplayBox* box = Unbox(info);
  if (!box) return info.Env().Undefined();
  auto* w = new WaitWorker(info.Env(), box->replayer);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

Napi::Object InitReplay(Napi::Env env, Napi::Object exports) {
  exports.Set("replayStart", Napi::Function::New(env, Start, "replayStart"));
  exports.Set("replayStats", Napi::Function::New(env, Stats, "replayStats"));
  exports.Set("replayCancel", Napi::Function::New(env, Cancel, "replayCancel"));
  exports.Set("replayWait", Napi::Function::New(env, Wait, "replayWait"));
  return exports;
}

}  // namespace kstreams
