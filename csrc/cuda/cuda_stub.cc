// The CUDA entry points of a build without CUDA.
#include "core/errors.h"
#include "cuda/cuda_backend.h"

namespace pyengine {

bool CudaAvailable() { return false; }

std::string CudaDeviceInfo() { return "this build has no CUDA backend (PYENGINE_CUDA=OFF)"; }

std::vector<std::pair<std::string, double>> CudaSelfTest() {
  throw EngineError("this build has no CUDA backend");
}

std::unique_ptr<Model> LoadCudaModel(const GgufFile&, const ModelConfig&) {
  throw EngineError("this build has no CUDA backend: rebuild with CMAKE_ARGS=\"-DPYENGINE_CUDA=ON\"");
}

}  // namespace pyengine
