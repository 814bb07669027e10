// The CUDA backend's entry points. They exist in every build: without CUDA (the default where
// no toolkit is found) CudaAvailable() is false and LoadCudaModel throws EngineError.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "model/model.h"

namespace pyengine {

class GgufFile;

// True when this build has the CUDA backend and a CUDA device is present.
bool CudaAvailable();
// "NAME (compute capability X.Y, N MiB)" of the device the backend uses, or why there is none.
std::string CudaDeviceInfo();
// The model of config.arch with its weights uploaded to the device. Throws ModelError for a
// shape or type the kernels do not handle, EngineError when CUDA is unavailable.
std::unique_ptr<Model> LoadCudaModel(const GgufFile& file, const ModelConfig& config);
// Each kernel against its CPU counterpart on random inputs: (check, largest relative error).
std::vector<std::pair<std::string, double>> CudaSelfTest();
#ifdef PYENGINE_CUDA_EMULATOR
// Builds on the CPU emulator only: (fault, the error the emulator reported for it).
std::vector<std::pair<std::string, std::string>> CudaEmulatorFaults();
#endif

}  // namespace pyengine
