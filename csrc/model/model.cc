#include "model/model.h"

#include "core/errors.h"
#include "core/gguf.h"
#include "model/architecture.h"

namespace pyengine {

std::unique_ptr<Model> LoadModel(const GgufFile& file, const ModelConfig& config, ThreadPool& pool) {
  if (const Architecture* a = FindArchitecture(config.arch)) return a->load(file, config, pool);
  throw ModelError(file.path() + ": unsupported architecture '" + config.arch + "'");
}

}  // namespace pyengine
