// The architectures this engine runs, each declared once: its name, the configuration rules it
// adds to the keys every Gemma file has, and its CPU model. Adding an architecture means its
// model file (the forward pass and these rules) and one entry in Architectures().
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/thread_pool.h"
#include "model/model.h"

namespace pyengine {

class GgufFile;

struct Architecture {
  std::string name;  // general.architecture
  // Completes a config whose common keys LoadConfig has read: attention scale, soft-cap, the
  // sliding/global layer pattern, KV sharing, and what the architecture fixes in code.
  void (*configure)(const GgufFile& file, ModelConfig& config);
  // The CPU model (see LoadModel).
  std::unique_ptr<Model> (*load)(const GgufFile& file, const ModelConfig& config, ThreadPool& pool);
};

// Every architecture, in the order error messages list them.
const std::vector<Architecture>& Architectures();
// The architecture called `name`, or null.
const Architecture* FindArchitecture(const std::string& name);
// Their names.
std::vector<std::string> SupportedArchs();

// Reads and checks the config. Throws ModelError for an unsupported architecture (naming it)
// and GgufError for missing or inconsistent keys. Reads Ollama's published blobs as they are
// (see gemma3.h's IsOllamaGemma3 for what differs in them).
ModelConfig LoadConfig(const GgufFile& file);

// Rules several architectures share, for their configure functions.
// The layer pattern: the file's attention.sliding_window_pattern if it has one, else
// period - 1 sliding layers then one global, repeated.
void SetLayerPattern(const GgufFile& file, ModelConfig& config, int64_t period);
// Throws ModelError where per-layer FFN widths or KV-head counts differ (Gemma 3 and 3n).
void RequireUniformLayers(const GgufFile& file, const ModelConfig& config);
// The first of `keys` the file has, as a float; `fallback` when it has none.
double FirstFloat(const GgufFile& file, const std::vector<std::string>& keys, double fallback);

}  // namespace pyengine
