// Placeholder, replaced by the engine's JS binding.
#include <napi.h>
namespace kstreams {
Napi::Object InitEngine(Napi::Env env, Napi::Object exports) { return exports; }
}  // namespace kstreams
