// The addon's whole surface: two probes that return plain objects. Argument checks live in
// TypeScript (src/node/native.ts); here a non-string path is treated as absent.
#include <napi.h>

#include "probes.h"

namespace {

// Bumped when the shape of a result changes, so TypeScript can refuse a stale build.
constexpr int kAbiVersion = 2;

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, kAbiVersion));
  exports.Set("probeGpus", Napi::Function::New(env, coldstart::ProbeGpus, "probeGpus"));
  exports.Set("probeCufile", Napi::Function::New(env, coldstart::ProbeCufile, "probeCufile"));
  return exports;
}

}  // namespace

NODE_API_MODULE(coldstart_native, Init)
