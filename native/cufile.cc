#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "dl.h"
#include "probes.h"

namespace coldstart {
namespace {

// cufile.h: CUfileError_t is {CUfileOpError err; CUresult cu_err;}, two int-sized enums returned by value.
struct CUfileError {
  int err;
  int cu_err;
};
using DriverFn = CUfileError (*)();
using PropertiesFn = CUfileError (*)(void*);

// The leading fields of CUfileDrvProps_t, stable across releases. Everything after them has changed
// between versions, so the library writes into a zeroed buffer far larger than any known layout and
// only this prefix is read back.
struct NvfsPrefix {
  unsigned int major_version;
  unsigned int minor_version;
  size_t poll_thresh_size;
  size_t max_direct_io_size;
  unsigned int dstatusflags;
  unsigned int dcontrolflags;
};
constexpr size_t kPropsBufferSize = 16384;

Napi::Object ErrorObject(Napi::Env env, CUfileError e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("err", e.err);
  o.Set("cuErr", e.cu_err);
  return o;
}

}  // namespace

Napi::Value ProbeCufile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string override = OptionalString(info, 0);
  Library lib = OpenFirst(override.empty() ? std::vector<std::string>{"libcufile.so.0", "libcufile.so"}
                                           : std::vector<std::string>{override});
  Napi::Object out = Napi::Object::New(env);
  out.Set("library", LibraryObject(env, lib));
  out.Set("open", env.Null());
  out.Set("properties", env.Null());
  out.Set("close", env.Null());
  std::vector<std::string> missing;
  if (lib.handle == nullptr) {
    out.Set("missingSymbols", StringArray(env, missing));
    return out;
  }
  auto open = reinterpret_cast<DriverFn>(Symbol(lib, "cuFileDriverOpen", &missing));
  auto properties = reinterpret_cast<PropertiesFn>(Symbol(lib, "cuFileDriverGetProperties", &missing));
  // cufile.h maps cuFileDriverClose to the reference-counted _v2 since CUDA 12.2; older libraries
  // export only the plain name. Try both before calling it missing.
  std::vector<std::string> closeMissing;
  auto close = reinterpret_cast<DriverFn>(Symbol(lib, "cuFileDriverClose_v2", &closeMissing));
  if (close == nullptr) close = reinterpret_cast<DriverFn>(Symbol(lib, "cuFileDriverClose", &closeMissing));
  if (close == nullptr) missing.insert(missing.end(), closeMissing.begin(), closeMissing.end());
  out.Set("missingSymbols", StringArray(env, missing));
  if (open == nullptr) return out;

  CUfileError opened = open();
  out.Set("open", ErrorObject(env, opened));
  if (opened.err != 0) return out;

  if (properties != nullptr) {
    std::vector<unsigned char> buffer(kPropsBufferSize, 0);
    CUfileError got = properties(buffer.data());
    Napi::Object props = Napi::Object::New(env);
    props.Set("result", ErrorObject(env, got));
    if (got.err == 0) {
      NvfsPrefix nvfs;
      std::memcpy(&nvfs, buffer.data(), sizeof nvfs);
      props.Set("nvfsMajor", nvfs.major_version);
      props.Set("nvfsMinor", nvfs.minor_version);
      props.Set("pollThreshSize", static_cast<double>(nvfs.poll_thresh_size));
      props.Set("maxDirectIoSize", static_cast<double>(nvfs.max_direct_io_size));
      props.Set("dstatusflags", nvfs.dstatusflags);
      props.Set("dcontrolflags", nvfs.dcontrolflags);
    }
    out.Set("properties", props);
  }
  if (close != nullptr) out.Set("close", ErrorObject(env, close()));
  return out;
}

}  // namespace coldstart
