// Constraint: a request's output grammar as the scheduler sees it, which tokens may come next
// and which came. The core knows no grammar: the bindings implement these over llguidance.
// The scheduler asks a ConstraintSolver for all the constrained rows of a step in one call, so
// that it can compute their masks in parallel, and does so while the forward pass runs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace pyengine {

class ConstraintSolver;

class Constraint {
 public:
  explicit Constraint(std::shared_ptr<ConstraintSolver> solver) : solver_(std::move(solver)) {}
  virtual ~Constraint() = default;
  ConstraintSolver* solver() const { return solver_.get(); }

 private:
  std::shared_ptr<ConstraintSolver> solver_;
};

class ConstraintSolver {
 public:
  virtual ~ConstraintSolver() = default;
  // masks [rows.size(), words], words = ceil(n_vocab / 32): bit t % 32 of word t / 32 of row i
  // is set when token t may follow what rows[i] has produced so far.
  virtual void FillMasks(const std::vector<Constraint*>& rows, uint32_t* masks, int64_t words) = 0;
  // Advances rows[i] by tokens[i]; per row, "" or why its grammar refused the token.
  virtual std::vector<std::string> Advance(const std::vector<Constraint*>& rows,
                                           const std::vector<int32_t>& tokens) = 0;
};

}  // namespace pyengine
