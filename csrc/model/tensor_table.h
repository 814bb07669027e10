// Each architecture's weight tensors, declared once: name in the file, shape in terms of the
// config, what kind of weight it is, and its Hugging Face (mlx-lm) name. The CPU models bind
// through ModelTensors, the CUDA models too, and Python reads the same tables
// (_core.architecture_tensors) for the MLX conversion and the synthetic model writer. Tensor
// names of the Gemma files appear in tensor_table.cc and nowhere else in csrc/.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/tensor.h"

namespace pyengine {

class GgufFile;

// A dimension of a weight, in terms of the config (and what the architecture fixes in code).
enum class Dim : uint8_t {
  kEmbd,             // n_embd
  kVocab,            // n_vocab
  kVocabPerLayer,    // n_vocab_per_layer: rows of Gemma 3n's per-layer table
  kQDim,             // n_head * head_dim
  kKvDim,            // n_head_kv * head_dim
  kHeadDim,          // head_dim
  kFf,               // n_ff
  kPerLayerWidth,    // Gemma 3n: width of one layer's per-layer input (256)
  kPerLayerAll,      // Gemma 3n: per-layer width * n_layer
  kLaurelRank,       // Gemma 3n: LAuReL rank (64)
  kStreams,          // Gemma 3n: AltUp streams (4)
  kStreamsLess1,     // Gemma 3n: the inactive AltUp streams (3)
  kStreamsSquared,   // Gemma 3n: 16 prediction coefficients
  kExperts,          // Gemma 4 MoE: n_expert
  kFfExp,            // Gemma 4 MoE: n_ff_exp, one expert's width
  kFfExp2,           // Gemma 4 MoE: 2 * n_ff_exp (gate and up fused)
  kRopeFreqs,        // Gemma 4: half the full layers' head size (proportional RoPE factors)
  kOne,              // 1 (a scalar weight)
};

// Which layers (for a global weight: which models) have a weight at all.
enum class Only : uint8_t {
  kAll,
  kKvOwners,        // required where the layer computes its own KV, optional where it shares
  kMoe,             // the mixture-of-experts layers (ModelConfig::layer_is_moe)
  kPerLayerInputs,  // models with per-layer inputs (n_embd_per_layer > 0)
  kFullLayers,      // models with a full-attention layer
};

enum class TensorKind : uint8_t {
  kMatrix,  // a projection [rows = out, cols = in]: packed (CPU) or uploaded (CUDA)
  kTable,   // rows looked up per token (embeddings); token_embd doubles as the tied output
  kNorm,    // an RMS-norm weight [n], read as floats
  kScale,   // another per-channel vector [n], read as floats
  kSmall,   // a matrix of a few values a row, read as floats
};

// The weights every table names; ids index ModelTensors.
enum class TensorId : uint8_t {
  // Gemma 3 (and the Gemma 3n text stack).
  kTokEmbd, kOutput, kOutputNorm,
  kAttnNorm, kAttnQ, kAttnK, kAttnV, kAttnOutput, kAttnQNorm, kAttnKNorm, kPostAttentionNorm,
  kFfnNorm, kFfnGate, kFfnUp, kFfnDown, kPostFfwNorm,
  // Gemma 3n.
  kPerLayerTokEmbd, kPerLayerModelProj, kPerLayerProjNorm, kAltupProj, kAltupUnembdProj,
  kInpGate, kProj, kPostNorm, kLaurelL, kLaurelR, kLaurelPostNorm, kAltupRouter,
  kAltupRouterNorm, kAltupPredictCoef, kAltupCorrectCoef, kAltupCorrectScale,
  // Gemma 4.
  kRopeFreqs, kLayerOutputScale, kFfnGateInp, kFfnGateInpScale, kPreFfwNorm2, kPostFfwNorm1,
  kPostFfwNorm2, kFfnGateUpExps, kFfnGateExps, kFfnUpExps, kFfnDownExps, kFfnDownExpsScale,
  kFfnExpertScaleOllama,
  kCount
};

struct TensorSpec {
  TensorId id;
  std::string name;       // in the file; after "blk.<layer>." for per-layer tensors
  std::string hf;         // mlx-lm's name ("{l}": the layer; "{k}": one name per outer slice);
                          // empty where mlx-lm has no such weight
  bool per_layer = false;
  TensorKind kind = TensorKind::kMatrix;
  std::vector<Dim> ne;    // GGUF order: ne[0] is the row length
  bool optional = false;  // may be absent (output: tied embeddings)
  bool plus_one = false;  // stored as 1 + the Hugging Face weight (Gemma 3's norms)
  Only only = Only::kAll;
};
using TensorTable = std::vector<TensorSpec>;

// The table of architecture `arch` (a name Architectures() lists); throws ModelError otherwise.
const TensorTable& TensorTableOf(const std::string& arch);
// The spec of `id` in `table`, or null when the architecture has no such weight.
const TensorSpec* FindSpec(const TensorTable& table, TensorId id);
// The tensor's name in a file: layer is ignored for global tensors.
std::string TensorName(const TensorSpec& spec, int64_t layer);
// The name of a global weight every Gemma file has (token_embd, ...), for code reading a file
// before its architecture's model exists (LoadConfig, the config rules).
std::string GlobalTensorName(TensorId id);

// The size of `d` in layer `layer` (Gemma 4's layers differ); -1: the largest of any layer.
int64_t DimSize(Dim d, const ModelConfig& config, int64_t layer = -1);
// Whether layer `layer` (-1 for a global weight) of a model may have the weight at all.
bool Applies(const TensorSpec& spec, const ModelConfig& config, int64_t layer);
const char* OnlyName(Only o);
const char* DimName(Dim d);    // the names Python resolves shapes by ("n_embd", ...)
const char* KindName(TensorKind k);

// A table's tensors in one file, bound and checked (presence, shape, computable type) at
// construction; ModelError names the first that does not fit.
class ModelTensors {
 public:
  ModelTensors(const GgufFile& file, const ModelConfig& config, const TensorTable& table);

  // The tensor (layer -1 for a global one); an empty view for an optional tensor the file
  // lacks. Throws std::logic_error for an id the table does not hold (a model's own bug).
  const TensorView& Get(TensorId id, int64_t layer = -1) const;
  // Its values as floats ([rows, cols] row-major): norms, scales, small matrices.
  std::vector<float> Floats(TensorId id, int64_t layer = -1) const;

 private:
  std::vector<std::vector<TensorView>> views_;  // [TensorId][layer or 0]
};

}  // namespace pyengine
