// JS face of interception: `new addon.Interception(options)` attaches, and the object owns the link
// until detach() or until it is garbage-collected or its environment goes away (then it detaches too:
// an unreachable interception could never be detached otherwise, and fail-open makes detaching safe).
#include <arpa/inet.h>
#include <napi.h>
#include <string.h>

#include "errors.h"
#include "interception.h"

namespace kstreams {

namespace {

class InterceptionWrap : public Napi::ObjectWrap<InterceptionWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Interception",
                       {
                           InstanceMethod<&InterceptionWrap::Counters>("counters"),
                           InstanceMethod<&InterceptionWrap::Detach>("detach"),
                       });
  }

  explicit InterceptionWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<InterceptionWrap>(info) {
    Napi::Env env = info.Env();
    InterceptionOptions options;
    if (!ParseOptions(info, &options)) return;
    InterceptionFailure failure;
    link_ = InterceptionLink::Attach(options, &failure);
    if (!link_) {
      Napi::Error e = CodedError(env, failure.code.c_str(), failure.message);
      if (failure.err) e.Set("errno", Napi::Number::New(env, -failure.err));
      if (!failure.syscall.empty()) e.Set("syscall", Napi::String::New(env, failure.syscall));
      e.ThrowAsJavaScriptException();
      return;
    }
    Napi::Object self = info.This().As<Napi::Object>();
    self.Set("linkId", Napi::Number::New(env, link_->linkId()));
    self.Set("programId", Napi::Number::New(env, link_->programId()));
    Napi::Array maps = Napi::Array::New(env, link_->mapIds().size());
    for (uint32_t i = 0; i < link_->mapIds().size(); i++) maps.Set(i, Napi::Number::New(env, link_->mapIds()[i]));
    self.Set("mapIds", maps);
  }

 private:
  static bool ParseOptions(const Napi::CallbackInfo& info, InterceptionOptions* options) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) {
      ArgumentError(env, "options", "an object").ThrowAsJavaScriptException();
      return false;
    }
    Napi::Object o = info[0].As<Napi::Object>();
    Napi::Value netns = o.Get("netnsPath");
    if (!netns.IsUndefined()) {
      if (!netns.IsString() || netns.As<Napi::String>().Utf8Value().empty()) {
        ArgumentError(env, "options.netnsPath", "a non-empty path string or undefined").ThrowAsJavaScriptException();
        return false;
      }
      options->netnsPath = netns.As<Napi::String>().Utf8Value();
    }
    Napi::Value port = o.Get("port");
    double portNumber = port.IsNumber() ? port.As<Napi::Number>().DoubleValue() : -1;
    if (!(portNumber >= 1 && portNumber <= 65535 && portNumber == static_cast<int>(portNumber))) {
      ArgumentError(env, "options.port", "an integer port 1..65535").ThrowAsJavaScriptException();
      return false;
    }
    options->port = static_cast<uint16_t>(portNumber);
    Napi::Value fd = o.Get("listenerFd");
    double fdNumber = fd.IsNumber() ? fd.As<Napi::Number>().DoubleValue() : -1;
    if (!(fdNumber >= 0 && fdNumber <= 0x7fffffff && fdNumber == static_cast<int>(fdNumber))) {
      ArgumentError(env, "options.listenerFd", "a file descriptor (integer >= 0)").ThrowAsJavaScriptException();
      return false;
    }
    options->listenerFd = static_cast<int>(fdNumber);
    Napi::Value bypass = o.Get("bypassSources");
    if (!bypass.IsUndefined()) {
      if (!bypass.IsArray()) {
        ArgumentError(env, "options.bypassSources", "an array of IP address strings").ThrowAsJavaScriptException();
        return false;
      }
      Napi::Array list = bypass.As<Napi::Array>();
      for (uint32_t i = 0; i < list.Length(); i++) {
        Napi::Value item = list.Get(i);
        std::string name = "options.bypassSources[" + std::to_string(i) + "]";
        std::string text = item.IsString() ? item.As<Napi::String>().Utf8Value() : "";
        struct in_addr v4;
        struct in6_addr v6;
        if (inet_pton(AF_INET, text.c_str(), &v4) == 1 && !options->bypassV4) {
          options->bypassV4 = true;
          options->bypassV4Address = v4.s_addr;
        } else if (inet_pton(AF_INET6, text.c_str(), &v6) == 1 && !options->bypassV6) {
          options->bypassV6 = true;
          memcpy(options->bypassV6Address.data(), &v6, sizeof v6);
        } else {
          ArgumentError(env, name, "a numeric IPv4 or IPv6 address, at most one of each family")
              .ThrowAsJavaScriptException();
          return false;
        }
      }
    }
    return true;
  }

  Napi::Value Counters(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    InterceptionCounters c;
    int rc = link_ ? link_->ReadCounters(&c) : -EBADF;
    if (rc < 0) {
      if (rc == -EBADF)
        CodedError(env, "EKSTREAMS_DETACHED", "interception counters: the interception is detached")
            .ThrowAsJavaScriptException();
      else
        ErrnoError(env, -rc, "bpf", "reading the interception counters").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("steered", Napi::Number::New(env, static_cast<double>(c.steered)));
    out.Set("bypassed", Napi::Number::New(env, static_cast<double>(c.bypassed)));
    out.Set("noListener", Napi::Number::New(env, static_cast<double>(c.noListener)));
    out.Set("assignFailed", Napi::Number::New(env, static_cast<double>(c.assignFailed)));
    return out;
  }

  Napi::Value Detach(const Napi::CallbackInfo& info) {
    if (link_) link_->Detach();
    link_.reset();
    return info.Env().Undefined();
  }

  std::unique_ptr<InterceptionLink> link_;
};

Napi::Value ProbeKernelFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  KernelProbe p = ProbeKernel();
  auto errnoName = [&](int err) -> Napi::Value {
    if (!err) return env.Null();
    const char* name = strerrorname_np(err);
    return Napi::String::New(env, name ? name : "EUNKNOWN");
  };
  Napi::Object out = Napi::Object::New(env);
  out.Set("bpfSyscall", Napi::Boolean::New(env, p.bpfSyscall));
  out.Set("bpfSyscallError", errnoName(p.bpfSyscallError));
  out.Set("btf", Napi::Boolean::New(env, p.btf));
  out.Set("skLookup", Napi::Boolean::New(env, p.skLookup));
  out.Set("skLookupError", errnoName(p.skLookupError));
  out.Set("sockmap", Napi::Boolean::New(env, p.sockmap));
  out.Set("sockmapError", errnoName(p.sockmapError));
  return out;
}

}  // namespace

Napi::Object InitInterception(Napi::Env env, Napi::Object exports) {
  InstallLibbpfLogger();
  exports.Set("Interception", InterceptionWrap::Define(env));
  exports.Set("probeKernelFeatures", Napi::Function::New<ProbeKernelFeatures>(env, "probeKernelFeatures"));
  return exports;
}

}  // namespace kstreams
