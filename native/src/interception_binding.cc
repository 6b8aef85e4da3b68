// Placeholder, replaced by the interception's JS binding.
#include <napi.h>
namespace kstreams {
Napi::Object InitInterception(Napi::Env env, Napi::Object exports) { return exports; }
}  // namespace kstreams
