#include "model/tensor_table.h"

#include <stdexcept>

#include "core/errors.h"
#include "core/gguf.h"
#include "model/gemma3n.h"
#include "model/ops.h"
#include "quant/formats.h"

namespace pyengine {
namespace {

using D = Dim;
using K = TensorKind;
using I = TensorId;

// Gemma 3: the globals, then one block per layer, in the order llama.cpp's converter writes them
// (the synthetic writer keeps it). mlx-lm's names sit under `hf_root` ("model.").
TensorTable Gemma3Globals(const std::string& hf_root) {
  return {
      {I::kTokEmbd, "token_embd.weight", hf_root + "embed_tokens.weight", false, K::kTable,
       {D::kEmbd, D::kVocab}},
      {I::kOutput, "output.weight", "lm_head.weight", false, K::kMatrix, {D::kEmbd, D::kVocab},
       /*optional=*/true},
  };
}

TensorTable Gemma3Block(const std::string& hf_root, bool plus_one) {
  const std::string l = hf_root + "layers.{l}.";
  return {
      {I::kAttnNorm, "attn_norm.weight", l + "input_layernorm.weight", true, K::kNorm, {D::kEmbd},
       false, plus_one},
      {I::kAttnQ, "attn_q.weight", l + "self_attn.q_proj.weight", true, K::kMatrix,
       {D::kEmbd, D::kQDim}},
      {I::kAttnK, "attn_k.weight", l + "self_attn.k_proj.weight", true, K::kMatrix,
       {D::kEmbd, D::kKvDim}},
      {I::kAttnV, "attn_v.weight", l + "self_attn.v_proj.weight", true, K::kMatrix,
       {D::kEmbd, D::kKvDim}},
      {I::kAttnQNorm, "attn_q_norm.weight", l + "self_attn.q_norm.weight", true, K::kNorm,
       {D::kHeadDim}, false, plus_one},
      {I::kAttnKNorm, "attn_k_norm.weight", l + "self_attn.k_norm.weight", true, K::kNorm,
       {D::kHeadDim}, false, plus_one},
      {I::kAttnOutput, "attn_output.weight", l + "self_attn.o_proj.weight", true, K::kMatrix,
       {D::kQDim, D::kEmbd}},
      {I::kPostAttentionNorm, "post_attention_norm.weight", l + "post_attention_layernorm.weight",
       true, K::kNorm, {D::kEmbd}, false, plus_one},
      {I::kFfnNorm, "ffn_norm.weight", l + "pre_feedforward_layernorm.weight", true, K::kNorm,
       {D::kEmbd}, false, plus_one},
      {I::kFfnGate, "ffn_gate.weight", l + "mlp.gate_proj.weight", true, K::kMatrix,
       {D::kEmbd, D::kFf}},
      {I::kFfnUp, "ffn_up.weight", l + "mlp.up_proj.weight", true, K::kMatrix, {D::kEmbd, D::kFf}},
      {I::kFfnDown, "ffn_down.weight", l + "mlp.down_proj.weight", true, K::kMatrix,
       {D::kFf, D::kEmbd}},
      {I::kPostFfwNorm, "post_ffw_norm.weight", l + "post_feedforward_layernorm.weight", true,
       K::kNorm, {D::kEmbd}, false, plus_one},
  };
}

TensorSpec OutputNorm(const std::string& hf_root, bool plus_one) {
  return {I::kOutputNorm, "output_norm.weight", hf_root + "norm.weight", false, K::kNorm,
          {D::kEmbd}, false, plus_one};
}

void Append(TensorTable& to, const TensorTable& more) { to.insert(to.end(), more.begin(), more.end()); }

// Gemma 3's norms are stored with the +1 folded in (llama.cpp's converter adds it).
TensorTable Gemma3() {
  TensorTable t = Gemma3Globals("model.");
  t.push_back(OutputNorm("model.", true));
  Append(t, Gemma3Block("model.", true));
  return t;
}

// Gemma 3n: Gemma 3's stack (norms as stored) plus AltUp, LAuReL and the per-layer inputs.
// mlx-lm ties its output to the embeddings: a separate output has no place there.
TensorTable Gemma3n() {
  const std::string r = "model.language_model.", l = r + "layers.{l}.";
  TensorTable t = Gemma3Globals(r);
  t[1].hf.clear();
  Append(t, {
      {I::kPerLayerTokEmbd, "per_layer_token_embd.weight", r + "embed_tokens_per_layer.weight",
       false, K::kTable, {D::kPerLayerAll, D::kVocabPerLayer}},
      {I::kPerLayerModelProj, "per_layer_model_proj.weight",
       r + "per_layer_model_projection.weight", false, K::kMatrix, {D::kEmbd, D::kPerLayerAll}},
      {I::kPerLayerProjNorm, "per_layer_proj_norm.weight", r + "per_layer_projection_norm.weight",
       false, K::kNorm, {D::kPerLayerWidth}},
      {I::kAltupProj, "altup_proj.weight", r + "altup_projections.{k}.weight", false, K::kMatrix,
       {D::kEmbd, D::kEmbd, D::kStreamsLess1}},
      {I::kAltupUnembdProj, "altup_unembd_proj.weight", r + "altup_unembed_projections.{k}.weight",
       false, K::kMatrix, {D::kEmbd, D::kEmbd, D::kStreamsLess1}},
      OutputNorm(r, false),
  });
  Append(t, Gemma3Block(r, false));
  Append(t, {
      {I::kInpGate, "inp_gate.weight", l + "per_layer_input_gate.weight", true, K::kMatrix,
       {D::kEmbd, D::kPerLayerWidth}},
      {I::kProj, "proj.weight", l + "per_layer_projection.weight", true, K::kMatrix,
       {D::kPerLayerWidth, D::kEmbd}},
      {I::kPostNorm, "post_norm.weight", l + "post_per_layer_input_norm.weight", true, K::kNorm,
       {D::kEmbd}},
      {I::kAltupCorrectCoef, "altup_correct_coef.weight", l + "altup.correction_coefs.weight",
       true, K::kSmall, {D::kStreams, D::kStreams}},
      // A bare parameter in mlx-lm, not a layer's weight.
      {I::kAltupCorrectScale, "altup_correct_scale.weight", l + "altup.correct_output_scale", true,
       K::kScale, {D::kEmbd}},
      {I::kAltupPredictCoef, "altup_predict_coef.weight", l + "altup.prediction_coefs.weight",
       true, K::kSmall, {D::kStreams, D::kStreamsSquared}},
      {I::kAltupRouter, "altup_router.weight", l + "altup.modality_router.weight", true,
       K::kMatrix, {D::kEmbd, D::kStreams}},
      {I::kAltupRouterNorm, "altup_router_norm.weight", l + "altup.router_norm.weight", true,
       K::kNorm, {D::kEmbd}},
      {I::kLaurelL, "laurel_l.weight", l + "laurel.linear_left.weight", true, K::kMatrix,
       {D::kEmbd, D::kLaurelRank}},
      {I::kLaurelR, "laurel_r.weight", l + "laurel.linear_right.weight", true, K::kMatrix,
       {D::kLaurelRank, D::kEmbd}},
      {I::kLaurelPostNorm, "laurel_post_norm.weight", l + "laurel.post_laurel_norm.weight", true,
       K::kNorm, {D::kEmbd}},
  });
  return t;
}

// Gemma 4: Gemma 3's block (norms as stored) where V, and on KV-shared layers K, may be left
// out; proportional RoPE factors; Gemma 3n's per-layer inputs where the model has them; a
// per-layer output scale; and on MoE layers a router, experts and their extra norms. mlx-lm
// names are given where they follow Gemma 3n's; the MLX backend does not convert Gemma 4.
TensorTable Gemma4() {
  const std::string r = "model.language_model.", l = r + "layers.{l}.";
  TensorTable t = Gemma3Globals(r);
  t[1].hf.clear();
  Append(t, {
      {I::kRopeFreqs, "rope_freqs.weight", "", false, K::kScale, {D::kRopeFreqs}, false, false,
       Only::kFullLayers},
      {I::kPerLayerTokEmbd, "per_layer_token_embd.weight", r + "embed_tokens_per_layer.weight",
       false, K::kTable, {D::kPerLayerAll, D::kVocab}, false, false, Only::kPerLayerInputs},
      {I::kPerLayerModelProj, "per_layer_model_proj.weight",
       r + "per_layer_model_projection.weight", false, K::kMatrix, {D::kEmbd, D::kPerLayerAll},
       false, false, Only::kPerLayerInputs},
      {I::kPerLayerProjNorm, "per_layer_proj_norm.weight", r + "per_layer_projection_norm.weight",
       false, K::kNorm, {D::kPerLayerWidth}, false, false, Only::kPerLayerInputs},
      OutputNorm(r, false),
  });
  TensorTable block = Gemma3Block(r, false);
  for (TensorSpec& s : block) {
    if (s.id == I::kAttnK || s.id == I::kAttnKNorm) s.only = Only::kKvOwners;
    if (s.id == I::kAttnV) {
      s.only = Only::kKvOwners;
      s.optional = true;  // V is K's projection where the layer has none
    }
  }
  Append(t, block);
  Append(t, {
      {I::kLayerOutputScale, "layer_output_scale.weight", "", true, K::kScale, {D::kOne}, true},
      {I::kInpGate, "inp_gate.weight", l + "per_layer_input_gate.weight", true, K::kMatrix,
       {D::kEmbd, D::kPerLayerWidth}, false, false, Only::kPerLayerInputs},
      {I::kProj, "proj.weight", l + "per_layer_projection.weight", true, K::kMatrix,
       {D::kPerLayerWidth, D::kEmbd}, false, false, Only::kPerLayerInputs},
      {I::kPostNorm, "post_norm.weight", l + "post_per_layer_input_norm.weight", true, K::kNorm,
       {D::kEmbd}, false, false, Only::kPerLayerInputs},
      {I::kFfnGateInp, "ffn_gate_inp.weight", "", true, K::kMatrix, {D::kEmbd, D::kExperts}, false,
       false, Only::kMoe},
      {I::kFfnGateInpScale, "ffn_gate_inp.scale", "", true, K::kScale, {D::kEmbd}, false, false,
       Only::kMoe},
      {I::kPreFfwNorm2, "pre_ffw_norm_2.weight", "", true, K::kNorm, {D::kEmbd}, false, false,
       Only::kMoe},
      {I::kPostFfwNorm1, "post_ffw_norm_1.weight", "", true, K::kNorm, {D::kEmbd}, false, false,
       Only::kMoe},
      {I::kPostFfwNorm2, "post_ffw_norm_2.weight", "", true, K::kNorm, {D::kEmbd}, false, false,
       Only::kMoe},
      // Gate and up come fused (gate rows first) or as two tensors: the model needs one form.
      {I::kFfnGateUpExps, "ffn_gate_up_exps.weight", "", true, K::kMatrix,
       {D::kEmbd, D::kFfExp2, D::kExperts}, true, false, Only::kMoe},
      {I::kFfnGateExps, "ffn_gate_exps.weight", "", true, K::kMatrix,
       {D::kEmbd, D::kFfExp, D::kExperts}, true, false, Only::kMoe},
      {I::kFfnUpExps, "ffn_up_exps.weight", "", true, K::kMatrix,
       {D::kEmbd, D::kFfExp, D::kExperts}, true, false, Only::kMoe},
      {I::kFfnDownExps, "ffn_down_exps.weight", "", true, K::kMatrix,
       {D::kFfExp, D::kEmbd, D::kExperts}, false, false, Only::kMoe},
      {I::kFfnDownExpsScale, "ffn_down_exps.scale", "", true, K::kScale, {D::kExperts}, true,
       false, Only::kMoe},
      // The same per-expert scale under the name Ollama's converter gives it.
      {I::kFfnExpertScaleOllama, "ffn_gate_inp.per_expert_scale", "", true, K::kScale,
       {D::kExperts}, true, false, Only::kMoe},
  });
  return t;
}

}  // namespace

const TensorTable& TensorTableOf(const std::string& arch) {
  static const TensorTable gemma3 = Gemma3(), gemma3n = Gemma3n(), gemma4 = Gemma4();
  if (arch == "gemma3") return gemma3;
  if (arch == "gemma3n") return gemma3n;
  if (arch == "gemma4") return gemma4;
  throw ModelError("no tensor table for architecture '" + arch + "'");
}

const TensorSpec* FindSpec(const TensorTable& table, TensorId id) {
  for (const TensorSpec& s : table) {
    if (s.id == id) return &s;
  }
  return nullptr;
}

std::string TensorName(const TensorSpec& spec, int64_t layer) {
  return spec.per_layer ? "blk." + std::to_string(layer) + "." + spec.name : spec.name;
}

std::string GlobalTensorName(TensorId id) {
  const TensorSpec* s = FindSpec(TensorTableOf("gemma3"), id);
  if (!s) s = FindSpec(TensorTableOf("gemma3n"), id);
  if (!s || s->per_layer) throw std::logic_error("not a global Gemma tensor");
  return s->name;
}

int64_t DimSize(Dim d, const ModelConfig& c, int64_t l) {
  constexpr int64_t kStreams = Gemma3nModel::kStreams;
  switch (d) {
    case D::kEmbd: return c.n_embd;
    case D::kVocab: return c.n_vocab;
    case D::kVocabPerLayer: return c.n_vocab_per_layer;
    case D::kQDim: return l < 0 ? c.q_dim() : c.q_dim_at(l);
    case D::kKvDim: return l < 0 ? c.kv_dim() : c.kv_dim_at(l);
    case D::kHeadDim: return l < 0 ? c.head_dim : c.head_dim_at(l);
    case D::kFf: return l < 0 ? c.n_ff : c.n_ff_at(l);
    case D::kPerLayerWidth: return c.n_embd_per_layer;
    case D::kPerLayerAll: return c.n_embd_per_layer * c.n_layer;
    case D::kLaurelRank: return Gemma3nModel::kLaurelRank;
    case D::kStreams: return kStreams;
    case D::kStreamsLess1: return kStreams - 1;
    case D::kStreamsSquared: return kStreams * kStreams;
    case D::kExperts: return c.n_expert;
    case D::kFfExp: return c.n_ff_exp;
    case D::kFfExp2: return 2 * c.n_ff_exp;
    case D::kRopeFreqs:
      for (int64_t i = 0; i < c.n_layer; ++i) {
        if (!c.layer_is_swa[i]) return c.head_dim_at(i) / 2;
      }
      return c.head_dim / 2;
    case D::kOne: return 1;
  }
  throw std::logic_error("unknown dimension");
}

const char* DimName(Dim d) {
  // In the order Dim declares them.
  static const char* const kNames[] = {
      "n_embd",  "n_vocab", "n_vocab_per_layer", "q_dim", "kv_dim", "head_dim", "n_ff",
      "per_layer_width", "per_layer_all", "laurel_rank", "altup_streams", "altup_streams_less_1",
      "altup_streams_squared", "n_expert", "n_ff_exp", "n_ff_exp_2", "rope_freqs", "one"};
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<size_t>(D::kOne) + 1);
  return kNames[static_cast<size_t>(d)];
}

const char* KindName(TensorKind k) {
  switch (k) {
    case K::kMatrix: return "matrix";
    case K::kTable: return "table";
    case K::kNorm: return "norm";
    case K::kScale: return "scale";
    case K::kSmall: return "small";
  }
  throw std::logic_error("unknown tensor kind");
}

const char* OnlyName(Only o) {
  switch (o) {
    case Only::kAll: return "all";
    case Only::kKvOwners: return "kv_owners";
    case Only::kMoe: return "moe";
    case Only::kPerLayerInputs: return "per_layer_inputs";
    case Only::kFullLayers: return "full_layers";
  }
  throw std::logic_error("unknown presence rule");
}

bool Applies(const TensorSpec& s, const ModelConfig& c, int64_t l) {
  switch (s.only) {
    case Only::kAll:
    case Only::kKvOwners: return true;
    case Only::kMoe: return l >= 0 && !c.layer_is_moe.empty() && c.layer_is_moe[l];
    case Only::kPerLayerInputs: return c.n_embd_per_layer > 0;
    case Only::kFullLayers:
      for (int64_t i = 0; i < c.n_layer; ++i) {
        if (!c.layer_is_swa[i]) return true;
      }
      return false;
  }
  return false;
}

ModelTensors::ModelTensors(const GgufFile& f, const ModelConfig& c, const TensorTable& table)
    : views_(static_cast<size_t>(TensorId::kCount)) {
  for (const TensorSpec& s : table) {
    auto& views = views_[static_cast<size_t>(s.id)];
    for (int64_t l = 0; l < (s.per_layer ? c.n_layer : 1); ++l) {
      const int64_t layer = s.per_layer ? l : -1;
      if (!Applies(s, c, layer)) {  // the layer has no such weight: an empty view
        views.emplace_back();
        continue;
      }
      std::vector<int64_t> ne;
      for (Dim d : s.ne) ne.push_back(DimSize(d, c, layer));
      const bool shares_kv = layer >= 0 && !c.kv_layer.empty() && c.kv_layer[layer] != layer;
      const bool optional = s.optional || (s.only == Only::kKvOwners && shares_kv);
      views.push_back(Bind(f, TensorName(s, l), ne, optional));
    }
  }
}

const TensorView& ModelTensors::Get(TensorId id, int64_t layer) const {
  const auto& views = views_[static_cast<size_t>(id)];
  const size_t i = layer < 0 ? 0 : static_cast<size_t>(layer);
  if (i >= views.size()) throw std::logic_error("a model asked for a weight its table lacks");
  return views[i];
}

std::vector<float> ModelTensors::Floats(TensorId id, int64_t layer) const {
  const TensorView& t = Get(id, layer);
  if (!t.data) throw std::logic_error("Floats of an absent optional weight");
  const int64_t cols = t.cols(), rows = t.rows();
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) DequantizeRow(t.type, t.row(r), v.data() + r * cols, cols);
  return v;
}

}  // namespace pyengine
