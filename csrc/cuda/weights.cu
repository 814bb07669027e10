#include "cuda/weights.h"

#include <algorithm>

#include "quant/formats.h"

namespace pyengine {
namespace cuda {

DevWeight Upload(const std::string& path, const TensorView& t) {
  DevWeight w;
  const int64_t rows = t.rows(), cols = t.cols();
  w.m.rows = rows;
  w.m.cols = cols;
  switch (t.type) {
    case GgmlType::kF32: w.m.type = WType::kF32; break;
    case GgmlType::kF16: w.m.type = WType::kF16; break;
    case GgmlType::kBF16: w.m.type = WType::kBF16; break;
    case GgmlType::kQ8_0: w.m.type = WType::kQ8_0; break;
    default:
      throw ModelError(path + ": tensor '" + t.name + "' has type " + TypeName(t.type) +
                       ", which the CUDA backend does not run");
  }
  // Inputs are prepared in groups of 32 values (Q8_0's block), for every type alike.
  if (cols % 32 != 0) {
    throw ModelError(path + ": tensor '" + t.name + "' has rows of " + std::to_string(cols) +
                     " values; the CUDA backend needs a multiple of 32");
  }
  if (w.m.type != WType::kQ8_0) {
    w.data.Upload(t.data, t.nbytes, nullptr);
  } else {
    // [rows, cols / 32] blocks of (fp16 scale, 32 int8) -> quants [rows, cols], scales.
    const int64_t nb = rows * (cols / 32);
    std::vector<int8_t> qs(static_cast<size_t>(rows * cols));
    std::vector<uint16_t> ds(static_cast<size_t>(nb));
    const BlockQ8_0* blocks = reinterpret_cast<const BlockQ8_0*>(t.data);
    for (int64_t b = 0; b < nb; ++b) {
      ds[b] = blocks[b].d;
      std::copy(blocks[b].qs, blocks[b].qs + 32, qs.begin() + b * 32);
    }
    w.data.Upload(reinterpret_cast<const uint8_t*>(qs.data()), qs.size(), nullptr);
    w.scales.Upload(reinterpret_cast<const __half*>(ds.data()), ds.size(), nullptr);
    w.m.d = w.scales.get();
  }
  w.m.w = w.data.get();
  PYE_CUDA(cudaDeviceSynchronize());  // the host copies above are freed on return
  return w;
}

DeviceBuffer<float> UploadFloats(const std::vector<float>& v) {
  DeviceBuffer<float> d;
  d.Upload(v.data(), v.size(), nullptr);
  PYE_CUDA(cudaDeviceSynchronize());
  return d;
}

}  // namespace cuda
}  // namespace pyengine
