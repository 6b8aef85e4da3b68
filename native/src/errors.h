// Errors thrown to JS the way Node's own are: message, code (errno name), errno and syscall.
#pragma once
#include <napi.h>
#include <string>

namespace kstreams {

// Throws (as a pending JS exception) an Error for errno `err` from `syscall`, with `what` saying on what.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& what);

// An Error with our own code (e.g. "EKSTREAMS_BPF_LOAD") and a message that says what to do next.
Napi::Error CodedError(Napi::Env env, const char* code, const std::string& message);

// A TypeError naming the argument that was wrong.
Napi::TypeError ArgumentError(Napi::Env env, const std::string& argument, const std::string& expected);

}  // namespace kstreams
