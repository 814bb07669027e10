// Error types the core throws; the bindings map each to a pyengine Python exception class.
#pragma once

#include <stdexcept>
#include <string>

namespace pyengine {

// Any failure of the engine that is not a bad file (unsupported model, bad arguments).
class EngineError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A GGUF file that is corrupt, truncated, hostile or of a kind this engine cannot read.
// The message always names the file.
class GgufError : public EngineError {
 public:
  GgufError(const std::string& path, const std::string& what)
      : EngineError(path + ": " + what) {}
};

// A valid GGUF file whose model this engine does not support (architecture, tensor types, shapes).
class ModelError : public EngineError {
 public:
  using EngineError::EngineError;
};

}  // namespace pyengine
