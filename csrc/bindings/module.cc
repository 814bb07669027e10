// The only pybind11 file: thin wrappers over the core. Compute runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bindings/constraints.h"
#include "core/errors.h"
#include "core/gguf.h"
#include "core/thread_pool.h"
#include "cuda/cuda_backend.h"
#include "model/architecture.h"
#include "model/ops.h"
#include "model/tensor_table.h"
#include "quant/cpu_features.h"
#include "quant/formats.h"
#include "quant/matmul.h"
#include "runtime/engine.h"
#include "runtime/generation.h"
#include "runtime/request.h"
#include "runtime/membw.h"
#include "runtime/tokenizer.h"
#include "runtime/vocab.h"

namespace py = pybind11;
using namespace pyengine;

namespace {

PyObject* g_engine_error = nullptr;
PyObject* g_gguf_error = nullptr;
PyObject* g_model_error = nullptr;

// GGUF strings are bytes; invalid UTF-8 must not raise while inspecting a file.
py::str Utf8(std::string_view s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

// Messages can quote names read from a hostile file: decode them leniently.
void SetError(PyObject* type, const char* what) {
  PyObject* msg = PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "replace");
  if (!msg) return;  // the decode error stays set
  PyErr_SetObject(type, msg);
  Py_DECREF(msg);
}

py::object ValueToPy(const GgufValue& v, size_t max_array) {
  switch (v.type) {
    case GgufType::kBool: return py::bool_(v.u != 0);
    case GgufType::kU8: case GgufType::kU16: case GgufType::kU32: case GgufType::kU64:
      return py::int_(v.u);
    case GgufType::kI8: case GgufType::kI16: case GgufType::kI32: case GgufType::kI64:
      return py::int_(v.i);
    case GgufType::kF32: case GgufType::kF64: return py::float_(v.f);
    case GgufType::kString: return Utf8(v.str);
    case GgufType::kArray: {
      py::list out;
      const size_t n = static_cast<size_t>(std::min<uint64_t>(v.count, max_array));
      for (size_t k = 0; k < n; ++k) {
        if (v.elem_type == GgufType::kString) {
          out.append(Utf8(v.strings[k]));
        } else if (v.elem_type == GgufType::kArray) {
          out.append(ValueToPy(v.items[k], max_array));
        } else if (v.elem_type == GgufType::kBool) {
          out.append(py::bool_(v.NumberAt(k) != 0));
        } else if (v.elem_type == GgufType::kF32 || v.elem_type == GgufType::kF64) {
          out.append(py::float_(v.NumberAt(k)));
        } else if (v.elem_type == GgufType::kU8 || v.elem_type == GgufType::kU16 ||
                   v.elem_type == GgufType::kU32 || v.elem_type == GgufType::kU64) {
          out.append(py::int_(v.UnsignedAt(k)));
        } else {
          out.append(py::int_(v.IntegerAt(k)));
        }
      }
      return std::move(out);
    }
    default: return py::none();
  }
}

// (metadata dict, tensor list, array lengths) of a GGUF file without building a model.
py::tuple ReadGguf(const std::string& path, size_t max_array) {
  std::unique_ptr<GgufFile> f;
  {
    py::gil_scoped_release nogil;
    f = std::make_unique<GgufFile>(path);
  }
  py::dict meta, lengths;
  for (const std::string& k : f->keys()) {
    const GgufValue* v = f->Find(k);
    meta[Utf8(k)] = ValueToPy(*v, max_array);
    if (v->type == GgufType::kArray) lengths[Utf8(k)] = py::int_(v->count);
  }
  py::list tensors;
  for (const TensorView& t : f->tensors()) {
    py::list shape;
    for (int d = 0; d < t.n_dims; ++d) shape.append(t.ne[d]);
    tensors.append(py::make_tuple(Utf8(t.name), TypeName(t.type), shape, t.nbytes));
  }
  py::dict info;
  info["version"] = f->version();
  info["alignment"] = f->alignment();
  info["file_size"] = f->file_size();
  return py::make_tuple(meta, tensors, lengths, info);
}

py::dict ConfigDict(const ModelConfig& c) {
  py::dict d;
  d["arch"] = c.arch;
  d["name"] = c.name;
  d["n_vocab"] = c.n_vocab;
  d["n_ctx_train"] = c.n_ctx_train;
  d["n_embd"] = c.n_embd;
  d["n_layer"] = c.n_layer;
  d["n_ff"] = c.n_ff;
  d["n_head"] = c.n_head;
  d["n_head_kv"] = c.n_head_kv;
  d["head_dim"] = c.head_dim;
  d["sliding_window"] = c.sliding_window;
  d["rms_eps"] = c.rms_eps;
  d["rope_base"] = c.rope_base;
  d["rope_base_swa"] = c.rope_base_swa;
  d["rope_scale"] = c.rope_scale;
  d["attn_scale"] = c.attn_scale;
  d["final_softcap"] = c.final_softcap;
  std::vector<bool> swa(c.layer_is_swa.begin(), c.layer_is_swa.end());
  d["layer_is_swa"] = swa;
  // Layer l reads the keys/values of layer kv_layer[l]: itself, or an earlier layer (Gemma 3n).
  d["kv_layer"] = c.kv_layer;
  // Per-layer shapes (Gemma 4's full and sliding layers differ).
  std::vector<int64_t> hd, kv, ff, rot;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    hd.push_back(c.head_dim_at(l));
    kv.push_back(c.n_head_kv_at(l));
    ff.push_back(c.n_ff_at(l));
    rot.push_back(c.n_rot_at(l));
  }
  d["layer_head_dim"] = hd;
  d["layer_n_head_kv"] = kv;
  d["layer_n_ff"] = ff;
  d["layer_n_rot"] = rot;
  d["n_embd_per_layer"] = c.n_embd_per_layer;
  d["n_expert"] = c.n_expert;
  d["n_expert_used"] = c.n_expert_used;
  d["n_ff_exp"] = c.n_ff_exp;
  std::vector<bool> moe(c.layer_is_moe.begin(), c.layer_is_moe.end());
  d["layer_is_moe"] = moe;
  return d;
}

// A request as Python holds it: the engine pointer serves cancellation (the Python object keeps
// the engine alive).
// Every token's raw bytes and whether it is special (control, user-defined or unused: a token
// never written as text), for building a grammar's tokenizer: [(bytes, special)].
py::list TokenPieces(const Tokenizer& tok) {
  py::list out;
  const Vocab& v = tok.vocab();
  for (int32_t id = 0; id < tok.n_vocab(); ++id) {
    const TokenType t = v.types[static_cast<size_t>(id)];
    const bool special = t == TokenType::kControl || t == TokenType::kUserDefined ||
                         t == TokenType::kUnused || t == TokenType::kUnknown;
    out.append(py::make_tuple(py::bytes(tok.Piece(id, true)), special));
  }
  return out;
}

// Deletes an engine without the GIL: its scheduler thread may be waiting for the GIL (a grammar
// mask) when the engine is collected, and joins that thread first.
struct DeleteWithoutGil {
  void operator()(Engine* e) const {
    py::gil_scoped_release nogil;
    delete e;
  }
};

struct PyRequest {
  std::shared_ptr<Request> req;
  Engine* engine;
};

// A step as Python sees it; an error step raises the request's error instead.
py::tuple StepTuple(const PyRequest& r, const GenerationStep& s) {
  if (s.done && s.done_reason == "error") throw EngineError(r.req->error());
  return py::make_tuple(s.token, Utf8(s.text), s.done,
                        s.done_reason.empty() ? py::object(py::none()) : py::object(py::str(s.done_reason)));
}

std::vector<int32_t> ToIds(const py::iterable& ids) {
  std::vector<int32_t> out;
  for (py::handle h : ids) {
    long long v = h.cast<long long>();
    if (v < INT32_MIN || v > INT32_MAX) throw EngineError("token id " + std::to_string(v) + " is out of range");
    out.push_back(static_cast<int32_t>(v));
  }
  return out;
}

// A model file opened for a backend that computes elsewhere (MLX): its config and tokenizer,
// and its tensors dequantized on request. No weights are packed.
struct ModelFile {
  explicit ModelFile(const std::string& path)
      : file(std::make_unique<GgufFile>(path)),
        cfg(LoadConfig(*file)),
        tok(std::make_unique<Tokenizer>(LoadVocab(*file, cfg.n_vocab))) {
    CheckTokenizerFits(path, *tok, cfg);
  }
  std::unique_ptr<GgufFile> file;
  ModelConfig cfg;
  std::unique_ptr<Tokenizer> tok;
};

// The decoding state of one request of such a backend: its logits go in, steps come out, with
// the native sampler, stop strings and streamed text. `tokens` is the prompt plus the output.
struct PyGeneration {
  std::unique_ptr<Generation> gen;
  std::vector<int32_t> tokens;
};

py::tuple PlainStep(const GenerationStep& s) {
  return py::make_tuple(s.token, Utf8(s.text), s.done,
                        s.done_reason.empty() ? py::object(py::none()) : py::object(py::str(s.done_reason)));
}

// The computable weight type called `name` ("Q4_K"), or ValueError.
GgmlType WeightTypeByName(const std::string& name) {
  for (uint32_t id = 0; id < 64; ++id) {
    const TypeTraits* tr = GetTypeTraits(id);
    if (tr && name == tr->name && IsSupportedWeightType(static_cast<GgmlType>(id))) {
      return static_cast<GgmlType>(id);
    }
  }
  throw py::value_error("unsupported type " + name);
}

// Tensor `name` of `f` as a numpy array in numpy's axis order (ggml's reversed), converted to
// float32, float16 or bfloat16 (returned as its uint16 bit patterns: numpy has no bfloat16).
py::array TensorArray(const GgufFile& f, const std::string& name, const std::string& dtype) {
  const TensorView* t = f.FindTensor(name);
  if (!t) throw ModelError(f.path() + ": tensor '" + name + "' is missing");
  if (!IsSupportedWeightType(t->type)) {
    throw ModelError(f.path() + ": tensor '" + name + "' has type " + TypeName(t->type) +
                     ", which this engine cannot read");
  }
  if (dtype != "f32" && dtype != "f16" && dtype != "bf16") {
    throw EngineError("dtype must be f32, f16 or bf16, got '" + dtype + "'");
  }
  std::vector<py::ssize_t> shape;
  for (int d = t->n_dims - 1; d >= 0; --d) shape.push_back(static_cast<py::ssize_t>(t->ne[d]));
  const int64_t cols = t->cols(), rows = t->rows();
  py::array out = dtype == "f32" ? py::array(py::dtype::of<float>(), shape)
                  : dtype == "f16" ? py::array(py::dtype("float16"), shape)
                                   : py::array(py::dtype::of<uint16_t>(), shape);
  char* dst = static_cast<char*>(out.mutable_data());
  {
    py::gil_scoped_release nogil;
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* src = t->row(r);
      if (dtype == "f32") {
        DequantizeRow(t->type, src, reinterpret_cast<float*>(dst) + r * cols, cols);
        continue;
      }
      DequantizeRow(t->type, src, row.data(), cols);
      uint16_t* d16 = reinterpret_cast<uint16_t*>(dst) + r * cols;
      for (int64_t c = 0; c < cols; ++c) {
        d16[c] = dtype == "f16" ? Fp32ToFp16(row[c]) : Fp32ToBf16(row[c]);
      }
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  BindConstraints(m);
  m.doc() = "pyengine native core";

  g_engine_error = PyErr_NewException("pyengine.PyEngineError", PyExc_RuntimeError, nullptr);
  py::tuple gguf_bases = py::make_tuple(py::handle(g_engine_error), py::handle(PyExc_ValueError));
  g_gguf_error = PyErr_NewException("pyengine.GGUFError", gguf_bases.ptr(), nullptr);
  g_model_error = PyErr_NewException("pyengine.ModelError", g_engine_error, nullptr);
  m.add_object("PyEngineError", py::handle(g_engine_error));
  m.add_object("GGUFError", py::handle(g_gguf_error));
  m.add_object("ModelError", py::handle(g_model_error));
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const GgufError& e) {
      SetError(g_gguf_error, e.what());
    } catch (const ModelError& e) {
      SetError(g_model_error, e.what());
    } catch (const EngineError& e) {
      SetError(g_engine_error, e.what());
    }
  });

  m.def("cuda_available", [] { return CudaAvailable(); },
        "Whether this build has the CUDA backend and a CUDA device is present.");
  m.def("cuda_device_info", [] { return CudaDeviceInfo(); },
        "The CUDA device the backend uses, or why there is none.");
  m.def("cuda_selftest", [] {
        py::dict d;
        for (const auto& [name, err] : CudaSelfTest()) d[py::str(name)] = err;
        return d;
      }, "Each CUDA kernel against its CPU counterpart: check name -> largest relative error.");
#ifdef PYENGINE_CUDA_EMULATOR
  m.def("cuda_emulator_faults", [] {
        py::dict d;
        for (const auto& [name, err] : CudaEmulatorFaults()) d[py::str(name)] = err;
        return d;
      }, "Emulated builds only: broken kernels and calls -> the error the emulator reported.");
#endif
  m.def("weight_types",
        [] {
          std::vector<std::string> out;
          for (uint32_t id = 0; id < 64; ++id) {
            const TypeTraits* tr = GetTypeTraits(id);
            if (tr && IsSupportedWeightType(static_cast<GgmlType>(id))) out.push_back(tr->name);
          }
          return out;
        },
        "Names of the tensor types the kernels compute with.");
  m.def("architecture_tensors",
        [](const std::string& arch) {
          py::list out;
          for (const TensorSpec& s : TensorTableOf(arch)) {
            py::dict d;
            d["name"] = s.name;
            d["hf"] = s.hf;
            d["per_layer"] = s.per_layer;
            d["kind"] = KindName(s.kind);
            std::vector<std::string> ne;
            for (Dim x : s.ne) ne.push_back(DimName(x));
            d["ne"] = ne;
            d["optional"] = s.optional;
            d["plus_one"] = s.plus_one;
            d["only"] = OnlyName(s.only);
            out.append(d);
          }
          return out;
        },
        py::arg("arch"),
        "The weight tensors of an architecture, in file order: name (after 'blk.<layer>.' when "
        "per_layer), hf (mlx-lm's name; '{l}' the layer, '{k}' one per outer slice), kind "
        "(matrix, table, norm, scale, small), ne (GGUF order, as dimension names: n_embd, "
        "n_vocab, ...), optional, plus_one (stored as 1 + the Hugging Face weight), only (which "
        "layers have it: all, kv_owners, moe, per_layer_inputs, full_layers).");
  m.def("architectures", [] { return SupportedArchs(); },
        "general.architecture values the native core runs.");
  m.def("isa", [] { return std::string(IsaName(ActiveIsa())); },
        "The kernel level in use: 'scalar', 'avx2', 'avx512' (x86-64), 'neon' or 'dotprod' (AArch64).");
  m.def("best_isa", [] { return std::string(IsaName(BestIsa())); },
        "The best kernel level this CPU supports.");
  m.def("set_isa",
        [](const std::string& name) {
          IsaLevel level;
          if (!ParseIsa(name, &level)) throw py::value_error("unknown ISA level '" + name + "'");
          if (!SetIsa(level)) throw py::value_error("this CPU does not support '" + name + "'");
        },
        py::arg("level"), "Forces a kernel level (as PYENGINE_ISA does at start-up).");
  m.def("amx", [] { return AmxActive(); },
        "Whether prompt products use AMX tile instructions (x86-64 CPUs that have them).");
  m.def("amx_usable", [] { return AmxUsable(); },
        "Whether this CPU, OS and build can run the AMX kernels.");
  m.def("set_amx",
        [](bool on) {
          if (!SetAmx(on)) throw py::value_error("this CPU, OS or build cannot run AMX kernels");
        },
        py::arg("on"), "Turns the AMX prompt kernels on or off (as PYENGINE_AMX=0 does at start-up).");
  m.def("memory_read_bandwidth",
        [](int64_t n_bytes, int n_threads, int reps) {
          py::gil_scoped_release nogil;
          return MemoryReadBandwidth(n_bytes, n_threads, reps);
        },
        py::arg("n_bytes") = int64_t{1} << 30, py::arg("n_threads") = 0, py::arg("reps") = 5,
        "Best-of-reps read bandwidth in GB/s over a buffer of n_bytes, read by n_threads.");

  m.def("matmul",
        [](const std::string& type_name, py::array_t<uint8_t, py::array::c_style> w, int64_t rows,
           int64_t cols, py::array_t<float, py::array::c_style | py::array::forcecast> x,
           int n_threads, int reps, bool timed) {
          // Kernel tests and micro-benchmarks: W (GGUF bytes of a [rows, cols] matrix) times
          // x [n, cols] through the same path the model uses, at the active ISA level.
          TensorView t;
          t.type = WeightTypeByName(type_name);
          const TypeTraits* tr = GetTypeTraits(static_cast<uint32_t>(t.type));
          if (rows <= 0 || cols <= 0 || rows > (int64_t{1} << 31) || cols > (int64_t{1} << 24) ||
              cols % tr->block_size != 0) {
            throw py::value_error("bad shape");
          }
          t.n_dims = 2;
          t.ne[0] = cols;
          t.ne[1] = rows;
          t.nbytes = static_cast<size_t>(rows * (cols / tr->block_size) * tr->type_size);
          if (static_cast<size_t>(w.size()) != t.nbytes) throw py::value_error("weight bytes do not match the shape");
          if (x.ndim() != 2 || x.shape(1) != cols) throw py::value_error("x must be [n, cols]");
          t.data = w.data();
          const int64_t n = x.shape(0);
          py::array_t<float> y({n, rows});
          double seconds = 0;
          {
            py::gil_scoped_release nogil;
            static std::map<int, std::unique_ptr<ThreadPool>> pools;  // guarded by the GIL's caller
            static std::mutex mu;
            std::lock_guard<std::mutex> lock(mu);
            auto& pool = pools[n_threads];
            if (!pool) pool = std::make_unique<ThreadPool>(n_threads);
            PackedMatrix m(t, *pool);
            const auto t0 = std::chrono::steady_clock::now();
            for (int r = 0; r < reps; ++r) MatMul(m, x.data(), n, y.mutable_data(), *pool);
            seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          }
          if (timed) return py::object(py::make_tuple(y, seconds / std::max(reps, 1)));
          return py::object(y);
        },
        py::arg("type"), py::arg("w"), py::arg("rows"), py::arg("cols"), py::arg("x"),
        py::arg("n_threads") = 1, py::arg("reps") = 1, py::arg("timed") = false,
        "With timed=True returns (y, seconds per product, packing excluded).");

  m.def("dequantize",
        [](const std::string& type_name, py::array_t<uint8_t, py::array::c_style> raw, int64_t n) {
          // Tests: the values of n weights stored as `type` (n a multiple of its block).
          const GgmlType type = WeightTypeByName(type_name);
          const TypeTraits* tr = GetTypeTraits(static_cast<uint32_t>(type));
          if (n <= 0 || n % tr->block_size != 0 ||
              static_cast<int64_t>(raw.size()) != n / tr->block_size * tr->type_size) {
            throw py::value_error("raw bytes do not hold n values of " + type_name);
          }
          py::array_t<float> out(n);
          DequantizeRow(type, raw.data(), out.mutable_data(), n);
          return out;
        },
        py::arg("type"), py::arg("raw"), py::arg("n"));

  m.def("softcap",
        [](py::array_t<float, py::array::c_style | py::array::forcecast> x, float cap) {
          // Tests: the final logit soft-cap, cap * tanh(x / cap), as the models apply it.
          if (!(cap > 0)) throw py::value_error("cap must be positive");
          py::array_t<float> out(x.size());
          std::memcpy(out.mutable_data(), x.data(), sizeof(float) * static_cast<size_t>(x.size()));
          Softcap(out.mutable_data(), out.size(), cap);
          return out;
        },
        py::arg("x"), py::arg("cap"));

  m.def("read_gguf", &ReadGguf, py::arg("path"), py::arg("max_array") = static_cast<size_t>(-1),
        "Reads a GGUF file's metadata and tensor directory: (metadata, tensors, array_lengths, info).");

  // A request's sampling and stopping settings: the one structure both backends take (the
  // Python layer validates and fills it once, pyengine.options.GenerateOptions.native).
  py::class_<GenerateOptions>(m, "GenerateOptions")
      .def(py::init<>())
#define PYENGINE_SAMPLING(field) \
  .def_property(#field, [](const GenerateOptions& g) { return g.sampling.field; }, \
                [](GenerateOptions& g, decltype(SamplingParams::field) v) { g.sampling.field = v; })
      PYENGINE_SAMPLING(temperature) PYENGINE_SAMPLING(top_k) PYENGINE_SAMPLING(top_p)
      PYENGINE_SAMPLING(min_p) PYENGINE_SAMPLING(repeat_penalty) PYENGINE_SAMPLING(repeat_last_n)
      PYENGINE_SAMPLING(presence_penalty) PYENGINE_SAMPLING(frequency_penalty)
      PYENGINE_SAMPLING(seed)
#undef PYENGINE_SAMPLING
      .def_readwrite("max_tokens", &GenerateOptions::max_tokens)
      .def_readwrite("stop", &GenerateOptions::stop)
      .def_readwrite("ignore_eos", &GenerateOptions::ignore_eos);

  py::class_<Engine, std::unique_ptr<Engine, DeleteWithoutGil>>(m, "Engine")
      .def(py::init([](const std::string& path, int64_t n_ctx, int32_t n_threads, int64_t kv_cache_bytes,
                       int max_batch, int64_t max_batch_tokens, double batch_wait_ms,
                       bool prefix_cache, const std::string& device, const std::string& kv_type,
                       const std::string& prompt_cache_dir, const std::string& model_id,
                       int64_t prompt_cache_bytes, int num_draft, int draft_max_sequences,
                       const std::string& draft_model) {
             EngineOptions o;
             o.device = device;
             o.kv_type = ParseKvType(kv_type);
             o.prompt_cache_dir = prompt_cache_dir;
             o.model_id = model_id;
             o.prompt_cache_bytes = prompt_cache_bytes;
             o.n_ctx = n_ctx;
             o.n_threads = n_threads;
             o.kv_cache_bytes = kv_cache_bytes;
             o.scheduler.max_batch = max_batch;
             o.scheduler.max_batch_tokens = max_batch_tokens;
             o.scheduler.batch_wait_us = static_cast<int64_t>(batch_wait_ms * 1000.0);
             o.scheduler.prefix_cache = prefix_cache;
             if (num_draft < 0 || num_draft > 64 || draft_max_sequences < 0) {
               throw EngineError("num_draft must be within [0, 64] and draft_max_sequences >= 0");
             }
             o.scheduler.num_draft = num_draft;
             o.scheduler.draft_max_sequences = draft_max_sequences;
             o.draft_path = draft_model;
             py::gil_scoped_release nogil;
             return std::unique_ptr<Engine, DeleteWithoutGil>(new Engine(path, o));
           }),
           py::arg("path"), py::arg("n_ctx") = 4096, py::arg("n_threads") = 0,
           py::arg("kv_cache_bytes") = int64_t{2048} << 20, py::arg("max_batch") = 16,
           py::arg("max_batch_tokens") = 512, py::arg("batch_wait_ms") = 0.0,
           py::arg("prefix_cache") = true, py::arg("device") = "cpu", py::arg("kv_type") = "f16",
           py::arg("prompt_cache_dir") = "", py::arg("model_id") = "",
           py::arg("prompt_cache_bytes") = int64_t{4096} << 20, py::arg("num_draft") = 0,
           py::arg("draft_max_sequences") = 4, py::arg("draft_model") = "")
      .def_property_readonly("config", [](const Engine& e) { return ConfigDict(e.config()); })
      .def_property_readonly("n_ctx", &Engine::n_ctx)
      .def_property_readonly("n_threads", &Engine::n_threads)
      .def("stats",
           [](Engine& e) {
             SchedulerStats st;
             KvCache::Stats kv;
             {
               // The scheduler's lock: never waited for while holding the GIL, which the
               // scheduler thread takes for grammar masks.
               py::gil_scoped_release nogil;
               st = e.stats();
               kv = e.kv_stats();
             }
             py::dict d;
             d["running"] = st.running;
             d["waiting"] = st.waiting;
             d["steps"] = st.steps;
             d["step_tokens"] = st.step_tokens;
             d["step_sequences"] = st.step_sequences;
             d["max_step_sequences"] = st.max_step_sequences;
             d["last_step_sequences"] = st.last_step_sequences;
             d["decode_tokens"] = st.decode_tokens;
             d["prompt_tokens"] = st.prompt_tokens;
             d["preemptions"] = st.preemptions;
             d["draft_steps"] = st.draft_steps;
             d["drafted"] = st.drafted;
             d["draft_accepted"] = st.draft_accepted;
             d["draft_failures"] = st.draft_failures;
             d["finished"] = st.finished;
             d["cancelled"] = st.cancelled;
             d["failed"] = st.failed;
             d["kv_pages_total"] = kv.pages_total;
             d["kv_pages_free"] = kv.pages_free;
             d["kv_pages_cached"] = kv.pages_cached;
             d["kv_pages_used"] = kv.pages_used;
             d["kv_page_bytes"] = kv.page_bytes;
             d["kv_type"] = KvTypeName(kv.type);
             if (kv.disk) {
               d["prompt_cache_files"] = kv.disk_stats.files;
               d["prompt_cache_bytes"] = kv.disk_stats.bytes;
               d["prompt_cache_budget_bytes"] = kv.disk_stats.budget_bytes;
               d["prompt_cache_reads"] = kv.disk_stats.reads;
               d["prompt_cache_writes"] = kv.disk_stats.writes;
               d["prompt_cache_rejected"] = kv.disk_stats.rejected;
               d["prompt_cache_evictions"] = kv.disk_stats.evictions;
             }
             d["kv_block_tokens"] = kv.block_tokens;
             d["kv_blocks_cached"] = kv.blocks_cached;
             d["prefix_query_tokens"] = kv.prefix_query_tokens;
             d["prefix_hit_tokens"] = kv.prefix_hit_tokens;
             d["kv_evictions"] = kv.evictions;
             return d;
           },
           "Scheduler and KV cache counters (see Engine.stats in Python).")
      .def("close",
           [](Engine& e) {
             py::gil_scoped_release nogil;
             e.Close();
           },
           "Stops the scheduler; requests still in flight end with an error.")
      .def("wait_ready",
           [](Engine& e, int64_t timeout_ms) {
             py::gil_scoped_release nogil;
             return e.WaitReady(timeout_ms);
           },
           py::arg("timeout_ms"),
           "Ids of notify-requests with new steps (waits up to timeout_ms for one).")
      .def_property_readonly("n_vocab", [](const Engine& e) { return e.config().n_vocab; })
      .def_property_readonly("bos_id", [](const Engine& e) { return e.tokenizer().vocab().bos_id; })
      .def_property_readonly("eos_id", [](const Engine& e) { return e.tokenizer().vocab().eos_id; })
      .def_property_readonly("eog_ids", [](const Engine& e) { return e.tokenizer().vocab().eog_ids; })
      .def_property_readonly("add_bos", [](const Engine& e) { return e.tokenizer().vocab().add_bos; })
      .def("tokenize",
           [](const Engine& e, const std::string& text, bool add_bos, bool special) {
             py::gil_scoped_release nogil;
             return e.tokenizer().Encode(text, add_bos, special);
           },
           py::arg("text"), py::arg("add_bos") = true, py::arg("special") = false)
      .def("detokenize",
           [](const Engine& e, const py::iterable& ids, bool special) {
             std::vector<int32_t> v = ToIds(ids);
             CheckTokenIds(v, e.tokenizer().n_vocab());
             return Utf8(e.tokenizer().Decode(v, special));
           },
           py::arg("ids"), py::arg("special") = false)
      .def("token_pieces", [](const Engine& e) { return TokenPieces(e.tokenizer()); },
           "Every token's (raw bytes, special): what a grammar's tokenizer is built from.")
      .def("stream_pieces",
           [](const Engine& e, const py::iterable& ids) {
             StreamDecoder dec(e.tokenizer());
             py::list out;
             const std::vector<int32_t> v = ToIds(ids);
             CheckTokenIds(v, e.tokenizer().n_vocab());
             for (int32_t t : v) out.append(Utf8(dec.Push(t)));
             return out;
           },
           py::arg("ids"), "Text a stream releases after each token (never half a character).")
      .def("token_piece",
           [](const Engine& e, int32_t id, bool special) {
             CheckTokenIds({id}, e.tokenizer().n_vocab());
             return py::bytes(e.tokenizer().Piece(id, special));
           },
           py::arg("id"), py::arg("special") = true)
      .def("logits",
           [](Engine& e, const py::iterable& ids) {
             std::vector<int32_t> v = ToIds(ids);
             auto out = std::make_unique<std::vector<float>>();
             {
               py::gil_scoped_release nogil;
               *out = e.Logits(v);
             }
             // Hand the buffer to numpy without a copy: [n, n_vocab] float32.
             const float* data = out->data();
             py::capsule owner(out.get(), [](void* p) { delete static_cast<std::vector<float>*>(p); });
             out.release();  // the capsule owns it now
             const py::ssize_t n = static_cast<py::ssize_t>(v.size());
             const py::ssize_t nv = static_cast<py::ssize_t>(e.config().n_vocab);
             return py::array_t<float>({n, nv}, {nv * 4, py::ssize_t{4}}, data, owner);
           },
           py::arg("ids"))
      .def("embed",
           [](Engine& e, const py::iterable& ids) {
             std::vector<int32_t> v = ToIds(ids);
             std::vector<float> out;
             {
               py::gil_scoped_release nogil;
               out = e.Embed(v);
             }
             py::array_t<float> a(static_cast<py::ssize_t>(out.size()));
             std::copy(out.begin(), out.end(), a.mutable_data());
             return a;
           },
           py::arg("ids"), "Mean of the final normed hidden states of ids: float32 [n_embd].")
      .def("submit",
           [](Engine& e, const py::iterable& prompt, const GenerateOptions& gen, int64_t n_ctx,
              bool notify, std::shared_ptr<Constraint> constraint, bool keep, bool speculative) {
             RequestOptions o;
             o.gen = gen;
             o.n_ctx = n_ctx;
             o.notify = notify;
             o.keep = keep;
             o.speculative = speculative;
             o.constraint = std::move(constraint);
             std::vector<int32_t> ids = ToIds(prompt);
             py::gil_scoped_release nogil;
             return PyRequest{e.Submit(std::move(ids), o), &e};
           },
           py::arg("prompt"), py::arg("options"), py::arg("n_ctx") = 0,
           py::arg("notify") = false, py::arg("constraint") = nullptr, py::arg("keep") = false,
           py::arg("speculative") = true, py::keep_alive<0, 1>(),
           "Queues a generation; returns its Request at once (the scheduler batches it). "
           "constraint: the grammar its output follows (a _core.Constraint), or None. keep: "
           "the prompt's full KV blocks go to the engine's prompt cache on disk. speculative: "
           "False keeps it from drafting when the engine decodes speculatively.");

  py::class_<PyRequest>(m, "Request")
      .def_property_readonly("id", [](const PyRequest& r) { return r.req->id(); })
      .def("next",
           [](PyRequest& r, int64_t timeout_ms) -> py::object {
             GenerationStep s;
             bool got;
             {
               py::gil_scoped_release nogil;
               got = r.req->Next(&s, timeout_ms);
             }
             if (!got) return py::none();
             return StepTuple(r, s);
           },
           py::arg("timeout_ms") = -1,
           "Waits for the next step: (token or -1, text, done, done_reason or None); None on timeout.")
      .def("poll",
           [](PyRequest& r) {
             py::list out;
             for (const GenerationStep& s : r.req->Poll()) out.append(StepTuple(r, s));
             return out;
           },
           "Every step available now, without waiting.")
      .def("cancel",
           [](PyRequest& r) {
             py::gil_scoped_release nogil;
             r.engine->Cancel(*r.req);
           },
           "Ends the request at the next step; its KV blocks are freed then.")
      .def_property_readonly("finished", [](const PyRequest& r) { return r.req->finished(); })
      .def_property_readonly("counts", [](const PyRequest& r) {
        const RequestCounts c = r.req->counts();
        py::dict d;
        d["prompt_tokens"] = c.prompt_tokens;
        d["prompt_eval_count"] = c.prompt_eval_count;
        d["cached_tokens"] = c.cached_tokens;
        d["eval_count"] = c.eval_count;
        d["prompt_eval_duration"] = c.prompt_eval_ns;
        d["eval_duration"] = c.eval_ns;
        d["preemptions"] = c.preemptions;
        return d;
      });

  // A GGUF file's tokenizer alone, whatever its model: every listed token is kept (as llama.cpp's
  // vocab_only load keeps them), since no token embedding bounds the ids here.
  py::class_<Tokenizer>(m, "Tokenizer")
      .def(py::init([](const std::string& path) {
             py::gil_scoped_release nogil;
             GgufFile file(path);
             return std::make_unique<Tokenizer>(LoadVocab(file, 0));
           }),
           py::arg("path"), "Reads a GGUF file's tokenizer (tokenizer.ggml.*) and nothing else.")
      .def_property_readonly("kind", [](const Tokenizer& t) {
        return t.vocab().kind == VocabKind::kGemma4Bpe ? "gemma4" : "spm";
      })
      .def_property_readonly("n_vocab", &Tokenizer::n_vocab)
      .def_property_readonly("bos_id", [](const Tokenizer& t) { return t.vocab().bos_id; })
      .def_property_readonly("eos_id", [](const Tokenizer& t) { return t.vocab().eos_id; })
      .def_property_readonly("eog_ids", [](const Tokenizer& t) { return t.vocab().eog_ids; })
      .def_property_readonly("add_bos", [](const Tokenizer& t) { return t.vocab().add_bos; })
      .def("tokenize",
           [](const Tokenizer& t, const std::string& text, bool add_bos, bool special) {
             py::gil_scoped_release nogil;
             return t.Encode(text, add_bos, special);
           },
           py::arg("text"), py::arg("add_bos") = true, py::arg("special") = false,
           "Text (str, or bytes taken as they are) -> ids, as llama_tokenize.")
      .def("detokenize",
           [](const Tokenizer& t, const py::iterable& ids, bool special) {
             std::vector<int32_t> v = ToIds(ids);
             CheckTokenIds(v, t.n_vocab());
             return Utf8(t.Decode(v, special));
           },
           py::arg("ids"), py::arg("special") = false)
      .def("piece",
           [](const Tokenizer& t, int32_t id, bool special) {
             CheckTokenIds({id}, t.n_vocab());
             return py::bytes(t.Piece(id, special));
           },
           py::arg("id"), py::arg("special") = false)
      .def("is_eog", &Tokenizer::IsEog, py::arg("id"))
      .def("token_pieces", [](const Tokenizer& t) { return TokenPieces(t); },
           "Every token's (raw bytes, special): what a grammar's tokenizer is built from.");

  py::class_<ModelFile>(m, "ModelFile")
      .def(py::init([](const std::string& path) {
             py::gil_scoped_release nogil;
             return std::make_unique<ModelFile>(path);
           }),
           py::arg("path"), "Opens a GGUF model for another backend: config, tokenizer, tensors.")
      .def_property_readonly("config", [](const ModelFile& f) { return ConfigDict(f.cfg); })
      .def_property_readonly("n_vocab", [](const ModelFile& f) { return f.cfg.n_vocab; })
      .def_property_readonly("bos_id", [](const ModelFile& f) { return f.tok->vocab().bos_id; })
      .def_property_readonly("eos_id", [](const ModelFile& f) { return f.tok->vocab().eos_id; })
      .def_property_readonly("eog_ids", [](const ModelFile& f) { return f.tok->vocab().eog_ids; })
      .def_property_readonly("tensor_names", [](const ModelFile& f) {
        py::list out;
        for (const TensorView& t : f.file->tensors()) out.append(Utf8(t.name));
        return out;
      })
      .def("check_ids",
           [](const ModelFile& f, const py::iterable& ids, int64_t n_ctx) {
             std::vector<int32_t> v = ToIds(ids);
             CheckPromptIds(f.cfg, v, n_ctx);
             return v;
           },
           py::arg("ids"), py::arg("n_ctx"),
           "The ids of a prompt for n_ctx positions, checked as the native engine checks them.")
      .def("tokenize",
           [](const ModelFile& f, const std::string& text, bool add_bos, bool special) {
             py::gil_scoped_release nogil;
             return f.tok->Encode(text, add_bos, special);
           },
           py::arg("text"), py::arg("add_bos") = true, py::arg("special") = false)
      .def("token_pieces", [](const ModelFile& f) { return TokenPieces(*f.tok); },
           "Every token's (raw bytes, special): what a grammar's tokenizer is built from.")
      .def("detokenize",
           [](const ModelFile& f, const py::iterable& ids, bool special) {
             std::vector<int32_t> v = ToIds(ids);
             CheckTokenIds(v, f.tok->n_vocab());
             return Utf8(f.tok->Decode(v, special));
           },
           py::arg("ids"), py::arg("special") = false)
      .def_property_readonly("tensor_types", [](const ModelFile& f) {
        py::dict out;
        for (const TensorView& t : f.file->tensors()) out[Utf8(t.name)] = TypeName(t.type);
        return out;
      })
      .def("tensor_q8_0",
           [](const ModelFile& f, const std::string& name) {
             const TensorView* t = f.file->FindTensor(name);
             if (!t) throw ModelError(f.file->path() + ": tensor '" + name + "' is missing");
             if (t->type != GgmlType::kQ8_0) {
               throw ModelError(f.file->path() + ": tensor '" + name + "' is not Q8_0");
             }
             std::vector<py::ssize_t> shape, dshape;
             for (int d = t->n_dims - 1; d >= 0; --d) {
               shape.push_back(static_cast<py::ssize_t>(t->ne[d]));
               dshape.push_back(static_cast<py::ssize_t>(d == 0 ? t->ne[0] / 32 : t->ne[d]));
             }
             py::array_t<int8_t> qs(shape);
             py::array d(py::dtype("float16"), dshape);
             int8_t* q = qs.mutable_data();
             uint16_t* ds = static_cast<uint16_t*>(d.mutable_data());
             const int64_t nb = t->n_elements() / 32;
             const BlockQ8_0* blocks = reinterpret_cast<const BlockQ8_0*>(t->data);
             for (int64_t b = 0; b < nb; ++b) {
               ds[b] = blocks[b].d;
               std::memcpy(q + b * 32, blocks[b].qs, 32);
             }
             return py::make_tuple(qs, d);
           },
           py::arg("name"),
           "A Q8_0 tensor as stored: int8 quants [..., cols] and fp16 scales [..., cols / 32].")
      .def("tensor_raw",
           [](const ModelFile& f, const std::string& name) {
             const TensorView* t = f.file->FindTensor(name);
             if (!t) throw ModelError(f.file->path() + ": tensor '" + name + "' is missing");
             const int64_t rows = t->rows();
             py::array_t<uint8_t> out({static_cast<py::ssize_t>(rows),
                                       static_cast<py::ssize_t>(t->row_bytes())});
             std::memcpy(out.mutable_data(), t->data, t->nbytes);
             return py::make_tuple(std::string(TypeName(t->type)), out);
           },
           py::arg("name"),
           "A tensor's bytes as stored: (type name, uint8 [rows, bytes per row]).")
      .def("tensor", [](const ModelFile& f, const std::string& name, const std::string& dtype) {
             return TensorArray(*f.file, name, dtype);
           },
           py::arg("name"), py::arg("dtype") = "f32",
           "A tensor in numpy axis order as float32, float16 or bfloat16 bits (uint16).")
      .def("generation",
           [](const ModelFile& f, const py::iterable& prompt, const GenerateOptions& opts,
              int64_t n_ctx) {
             auto g = std::make_unique<PyGeneration>();
             g->tokens = ToIds(prompt);
             CheckTokenIds(g->tokens, f.cfg.n_vocab);
             g->gen = std::make_unique<Generation>(*f.tok, opts, n_ctx);
             return g;
           },
           py::arg("prompt"), py::arg("options"), py::arg("n_ctx"), py::keep_alive<0, 1>(),
           "The sampling and streaming state of one request.");

  py::class_<PyGeneration>(m, "Generation")
      .def("accept",
           [](PyGeneration& g, const py::array_t<float, py::array::c_style | py::array::forcecast>& logits) {
             if (logits.ndim() != 1) throw EngineError("logits must be one row [n_vocab]");
             if (g.gen->done()) throw EngineError("the generation has ended");
             const int64_t n = static_cast<int64_t>(logits.shape(0));
             GenerationStep s;
             {
               py::gil_scoped_release nogil;
               s = g.gen->Accept(logits.data(), n, g.tokens);
             }
             return PlainStep(s);
           },
           py::arg("logits"),
           "Samples the next token from the last position's logits: (token, text, done, reason).")
      .def("finish",
           [](PyGeneration& g, const std::string& reason, bool flush_text) {
             return PlainStep(g.gen->Finish(reason, flush_text));
           },
           py::arg("reason"), py::arg("flush_text") = true,
           "Ends the output early (cancel, error), releasing held-back text when flush_text.")
      .def_property_readonly("done", [](const PyGeneration& g) { return g.gen->done(); })
      .def_property_readonly("n_output", [](const PyGeneration& g) { return g.gen->n_output(); })
      .def_property_readonly("tokens", [](const PyGeneration& g) { return g.tokens; });
}
