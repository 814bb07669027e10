#include "model/model.h"

#include "core/errors.h"
#include "core/gguf.h"
#include "model/gemma3.h"
#include "model/gemma3n.h"

namespace pyengine {

std::unique_ptr<Model> LoadModel(const GgufFile& file, const ModelConfig& config, ThreadPool& pool) {
  if (config.arch == "gemma3") return std::make_unique<Gemma3Model>(file, config, pool);
  if (config.arch == "gemma3n") return std::make_unique<Gemma3nModel>(file, config, pool);
  throw ModelError(file.path() + ": unsupported architecture '" + config.arch + "'");
}

}  // namespace pyengine
