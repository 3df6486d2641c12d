#include <string>
#include <vector>

#include "dl.h"
#include "probes.h"

namespace coldstart {
namespace {

// The NVML ABI as documented in nvml.h: nvmlReturn_t is an int-sized enum, handles are pointers.
using nvmlReturn_t = int;
using nvmlDevice_t = void*;
using InitFn = nvmlReturn_t (*)();
using CountFn = nvmlReturn_t (*)(unsigned int*);
using HandleFn = nvmlReturn_t (*)(unsigned int, nvmlDevice_t*);
using DeviceStringFn = nvmlReturn_t (*)(nvmlDevice_t, char*, unsigned int);
using CapabilityFn = nvmlReturn_t (*)(nvmlDevice_t, int*, int*);
using SystemStringFn = nvmlReturn_t (*)(char*, unsigned int);
using CudaVersionFn = nvmlReturn_t (*)(int*);
using ErrorStringFn = const char* (*)(nvmlReturn_t);

// Buffer sizes from nvml.h (NVML_DEVICE_NAME_V2_BUFFER_SIZE, NVML_DEVICE_UUID_V2_BUFFER_SIZE,
// NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE).
constexpr unsigned int kNameSize = 96;
constexpr unsigned int kUuidSize = 96;
constexpr unsigned int kDriverSize = 80;

struct Nvml {
  InitFn init = nullptr;
  CountFn count = nullptr;
  HandleFn handle = nullptr;
  DeviceStringFn name = nullptr;
  DeviceStringFn uuid = nullptr;
  CapabilityFn capability = nullptr;
  SystemStringFn driverVersion = nullptr;
  CudaVersionFn cudaVersion = nullptr;
  InitFn shutdown = nullptr;
  ErrorStringFn errorString = nullptr;
};

std::string Message(const Nvml& nvml, nvmlReturn_t code) {
  const char* s = nvml.errorString != nullptr ? nvml.errorString(code) : nullptr;
  return s != nullptr ? std::string(s) : "NVML error " + std::to_string(code);
}

// Records a failed call as {call, code, message}; returns whether the call succeeded.
bool Check(Napi::Env env, const Nvml& nvml, Napi::Array errors, const char* call, nvmlReturn_t code) {
  if (code == 0) return true;
  Napi::Object e = Napi::Object::New(env);
  e.Set("call", call);
  e.Set("code", code);
  e.Set("message", Message(nvml, code));
  errors.Set(errors.Length(), e);
  return false;
}

}  // namespace

Napi::Value ProbeGpus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string override = OptionalString(info, 0);
  Library lib = OpenFirst(override.empty() ? std::vector<std::string>{"libnvidia-ml.so.1"}
                                           : std::vector<std::string>{override});
  Napi::Object out = Napi::Object::New(env);
  Napi::Array errors = Napi::Array::New(env);
  Napi::Array gpus = Napi::Array::New(env);
  out.Set("library", LibraryObject(env, lib));
  out.Set("errors", errors);
  out.Set("gpus", gpus);
  out.Set("driverVersion", env.Null());
  out.Set("cudaDriverVersion", env.Null());
  out.Set("session", false);
  std::vector<std::string> missing;
  if (lib.handle == nullptr) {
    out.Set("missingSymbols", StringArray(env, missing));
    return out;
  }

  Nvml nvml;
  nvml.init = reinterpret_cast<InitFn>(Symbol(lib, "nvmlInit_v2", &missing));
  nvml.count = reinterpret_cast<CountFn>(Symbol(lib, "nvmlDeviceGetCount_v2", &missing));
  nvml.handle = reinterpret_cast<HandleFn>(Symbol(lib, "nvmlDeviceGetHandleByIndex_v2", &missing));
  nvml.name = reinterpret_cast<DeviceStringFn>(Symbol(lib, "nvmlDeviceGetName", &missing));
  nvml.uuid = reinterpret_cast<DeviceStringFn>(Symbol(lib, "nvmlDeviceGetUUID", &missing));
  nvml.capability =
      reinterpret_cast<CapabilityFn>(Symbol(lib, "nvmlDeviceGetCudaComputeCapability", &missing));
  nvml.driverVersion =
      reinterpret_cast<SystemStringFn>(Symbol(lib, "nvmlSystemGetDriverVersion", &missing));
  nvml.cudaVersion = reinterpret_cast<CudaVersionFn>(Symbol(lib, "nvmlSystemGetCudaDriverVersion", &missing));
  nvml.shutdown = reinterpret_cast<InitFn>(Symbol(lib, "nvmlShutdown", &missing));
  nvml.errorString = reinterpret_cast<ErrorStringFn>(Symbol(lib, "nvmlErrorString", &missing));
  out.Set("missingSymbols", StringArray(env, missing));
  // Without the calls that bracket a session, nothing below can be trusted; the rest degrade alone.
  if (nvml.init == nullptr || nvml.shutdown == nullptr || nvml.count == nullptr || nvml.handle == nullptr) {
    return out;
  }
  if (!Check(env, nvml, errors, "nvmlInit_v2", nvml.init())) return out;
  out.Set("session", true);

  if (nvml.driverVersion != nullptr) {
    char version[kDriverSize] = {};
    if (Check(env, nvml, errors, "nvmlSystemGetDriverVersion", nvml.driverVersion(version, kDriverSize))) {
      version[kDriverSize - 1] = '\0';
      out.Set("driverVersion", std::string(version));
    }
  }
  if (nvml.cudaVersion != nullptr) {
    int cuda = 0;
    if (Check(env, nvml, errors, "nvmlSystemGetCudaDriverVersion", nvml.cudaVersion(&cuda))) {
      out.Set("cudaDriverVersion", cuda);
    }
  }
  unsigned int count = 0;
  if (Check(env, nvml, errors, "nvmlDeviceGetCount_v2", nvml.count(&count))) {
    for (unsigned int i = 0; i < count; i++) {
      nvmlDevice_t device = nullptr;
      if (!Check(env, nvml, errors, "nvmlDeviceGetHandleByIndex_v2", nvml.handle(i, &device))) continue;
      Napi::Object gpu = Napi::Object::New(env);
      gpu.Set("index", i);
      gpu.Set("name", env.Null());
      gpu.Set("uuid", env.Null());
      gpu.Set("computeCapability", env.Null());
      char name[kNameSize] = {};
      if (nvml.name != nullptr && Check(env, nvml, errors, "nvmlDeviceGetName", nvml.name(device, name, kNameSize))) {
        name[kNameSize - 1] = '\0';
        gpu.Set("name", std::string(name));
      }
      char uuid[kUuidSize] = {};
      if (nvml.uuid != nullptr && Check(env, nvml, errors, "nvmlDeviceGetUUID", nvml.uuid(device, uuid, kUuidSize))) {
        uuid[kUuidSize - 1] = '\0';
        gpu.Set("uuid", std::string(uuid));
      }
      int major = 0;
      int minor = 0;
      if (nvml.capability != nullptr &&
          Check(env, nvml, errors, "nvmlDeviceGetCudaComputeCapability", nvml.capability(device, &major, &minor))) {
        Napi::Object cc = Napi::Object::New(env);
        cc.Set("major", major);
        cc.Set("minor", minor);
        gpu.Set("computeCapability", cc);
      }
      gpus.Set(gpus.Length(), gpu);
    }
  }
  Check(env, nvml, errors, "nvmlShutdown", nvml.shutdown());
  return out;
}

}  // namespace coldstart
