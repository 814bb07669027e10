// Weights on the device: matrices in the layouts the kernels read, and plain float vectors.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"
#include "cuda/device.h"

namespace pyengine {
namespace cuda {

// A matrix uploaded to the device with the storage it keeps there.
struct DevWeight {
  DeviceBuffer<uint8_t> data;
  DeviceBuffer<__half> scales;  // Q8_0 only
  DevMatrix m;
};

// Uploads a 2-D tensor [rows, cols] (F32, F16, BF16 as they are; Q8_0 split into quants and
// scales). Throws ModelError, naming the file and tensor, for another type or rows whose length
// is not a multiple of 4.
DevWeight Upload(const std::string& path, const TensorView& t);

DeviceBuffer<float> UploadFloats(const std::vector<float>& v);

}  // namespace cuda
}  // namespace pyengine
