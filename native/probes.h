#pragma once

#include <napi.h>

namespace coldstart {

// GPUs through NVML (libnvidia-ml.so.1, or the path in argument 0). Never throws.
Napi::Value ProbeGpus(const Napi::CallbackInfo& info);

// cuFile driver open, properties and close (libcufile.so.0, then libcufile.so, or the path in
// argument 0). Creates CUDA contexts on every GPU: only ever call it in a short-lived process.
Napi::Value ProbeCufile(const Napi::CallbackInfo& info);

}  // namespace coldstart
