// kstreams.node: the native data plane. Each part registers its functions on the module's exports.
#include <napi.h>

namespace kstreams {
Napi::Object InitEngine(Napi::Env env, Napi::Object exports);
Napi::Object InitInterception(Napi::Env env, Napi::Object exports);
Napi::Object InitReplay(Napi::Env env, Napi::Object exports);
Napi::Object InitFeed(Napi::Env env, Napi::Object exports);
}  // namespace kstreams

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  kstreams::InitEngine(env, exports);
  kstreams::InitInterception(env, exports);
  kstreams::InitReplay(env, exports);
  kstreams::InitFeed(env, exports);
  return exports;
}

NODE_API_MODULE(kstreams, Init)
