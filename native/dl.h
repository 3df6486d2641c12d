// Run-time loading by soname: nothing links against CUDA at build time, and a missing library or
// symbol is a fact to report (with dlerror()'s text), never a crash.
#pragma once

#include <napi.h>

#include <string>
#include <vector>

namespace coldstart {

struct Library {
  void* handle = nullptr;
  // The name that loaded, or empty.
  std::string path;
  // Every dlopen() failure, "name: dlerror()" joined by "; ", when nothing loaded.
  std::string reason;
};

// Tries `candidates` in order with RTLD_NOW | RTLD_LOCAL. The handle is never closed: probes run in
// short-lived processes, and unloading NVIDIA's libraries after use has crashed at exit before.
Library OpenFirst(const std::vector<std::string>& candidates);

// dlsym() that records "name: dlerror()" in `missing` when the symbol is absent.
void* Symbol(const Library& lib, const char* name, std::vector<std::string>* missing);

// `{loaded, path, reason}` for JavaScript.
Napi::Object LibraryObject(Napi::Env env, const Library& lib);

// The optional path override passed from TypeScript (validated there); empty when absent.
std::string OptionalString(const Napi::CallbackInfo& info, size_t index);

Napi::Array StringArray(Napi::Env env, const std::vector<std::string>& items);

}  // namespace coldstart
