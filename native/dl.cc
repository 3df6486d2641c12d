#include "dl.h"

#include <dlfcn.h>

namespace coldstart {

Library OpenFirst(const std::vector<std::string>& candidates) {
  Library lib;
  for (const std::string& name : candidates) {
    dlerror();  // clear a stale error so the text below belongs to this call
    void* handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) {
      lib.handle = handle;
      lib.path = name;
      lib.reason.clear();
      return lib;
    }
    const char* err = dlerror();
    if (!lib.reason.empty()) lib.reason += "; ";
    lib.reason += err != nullptr ? err : (name + ": dlopen failed");
  }
  return lib;
}

void* Symbol(const Library& lib, const char* name, std::vector<std::string>* missing) {
  dlerror();
  void* sym = dlsym(lib.handle, name);
  if (sym == nullptr) {
    const char* err = dlerror();
    missing->push_back(err != nullptr ? std::string(err) : std::string(name) + ": not found");
  }
  return sym;
}

Napi::Object LibraryObject(Napi::Env env, const Library& lib) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("loaded", Napi::Boolean::New(env, lib.handle != nullptr));
  o.Set("path", lib.handle != nullptr ? Napi::String::New(env, lib.path) : env.Null());
  o.Set("reason", lib.handle != nullptr ? env.Null() : Napi::String::New(env, lib.reason));
  return o;
}

std::string OptionalString(const Napi::CallbackInfo& info, size_t index) {
  if (info.Length() <= index || !info[index].IsString()) return std::string();
  return info[index].As<Napi::String>().Utf8Value();
}

Napi::Array StringArray(Napi::Env env, const std::vector<std::string>& items) {
  Napi::Array a = Napi::Array::New(env, items.size());
  for (size_t i = 0; i < items.size(); i++) a.Set(static_cast<uint32_t>(i), items[i]);
  return a;
}

}  // namespace coldstart
