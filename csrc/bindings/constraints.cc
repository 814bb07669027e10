#include "bindings/constraints.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/stl.h>

#include "runtime/constraint.h"

namespace py = pybind11;

namespace pyengine {
namespace {

// Python callables behind the solver interface. The scheduler thread calls it with no lock
// held and takes the GIL for each call (llguidance releases it while it computes). Matchers
// of finished requests die on the scheduler thread, where the GIL may not be free: their
// references wait here and are dropped under the GIL of the next call (or at the end).
class PySolver : public ConstraintSolver {
 public:
  PySolver(py::object fill, py::object advance)
      : fill_(std::move(fill)), advance_(std::move(advance)) {}

  ~PySolver() override {
    if (!Py_IsInitialized()) {  // interpreter gone: the references die with it
      fill_.release();
      advance_.release();
      return;
    }
    py::gil_scoped_acquire gil;
    DropDead();
    fill_ = py::object();
    advance_ = py::object();
  }

  void FillMasks(const std::vector<Constraint*>& rows, uint32_t* masks, int64_t words) override {
    py::gil_scoped_acquire gil;
    DropDead();
    try {
      fill_(Matchers(rows), reinterpret_cast<uintptr_t>(masks), words);
    } catch (py::error_already_set& e) {
      throw std::runtime_error(e.what());  // converted under the GIL
    }
  }

  std::vector<std::string> Advance(const std::vector<Constraint*>& rows,
                                   const std::vector<int32_t>& tokens) override {
    py::gil_scoped_acquire gil;
    DropDead();
    try {
      return advance_(Matchers(rows), tokens).cast<std::vector<std::string>>();
    } catch (py::error_already_set& e) {
      throw std::runtime_error(e.what());
    } catch (const py::cast_error& e) {
      throw std::runtime_error(std::string("advance must return a list of strings: ") + e.what());
    }
  }

  // A finished request's matcher: its reference, dropped later under the GIL.
  void Bury(PyObject* matcher) {
    std::lock_guard<std::mutex> lock(dead_mu_);
    dead_.push_back(matcher);
  }

 private:
  static py::list Matchers(const std::vector<Constraint*>& rows);

  void DropDead() {
    std::vector<PyObject*> dead;
    {
      std::lock_guard<std::mutex> lock(dead_mu_);
      dead.swap(dead_);
    }
    for (PyObject* p : dead) Py_XDECREF(p);
  }

  py::object fill_, advance_;
  std::mutex dead_mu_;
  std::vector<PyObject*> dead_;
};

class PyConstraint : public Constraint {
 public:
  PyConstraint(std::shared_ptr<PySolver> solver, py::object matcher)
      : Constraint(solver), py_solver_(solver.get()), matcher_(std::move(matcher)) {}
  // Never takes the GIL: the reference goes to the solver (which this object keeps alive).
  ~PyConstraint() override { py_solver_->Bury(matcher_.release().ptr()); }
  const py::object& matcher() const { return matcher_; }

 private:
  PySolver* py_solver_;
  py::object matcher_;
};

py::list PySolver::Matchers(const std::vector<Constraint*>& rows) {
  py::list out;
  for (Constraint* c : rows) out.append(static_cast<PyConstraint*>(c)->matcher());
  return out;
}

}  // namespace

void BindConstraints(py::module_& m) {
  py::class_<ConstraintSolver, std::shared_ptr<ConstraintSolver>>(m, "ConstraintSolver")
      .def(py::init([](py::object fill, py::object advance) -> std::shared_ptr<ConstraintSolver> {
             return std::make_shared<PySolver>(std::move(fill), std::move(advance));
           }),
           py::arg("fill_masks"), py::arg("advance"),
           "Grammar callbacks the scheduler calls once per step for all constrained rows: "
           "fill_masks(matchers, address, words) writes a [len(matchers), words] uint32 bitmask "
           "at address (bit t set: token t allowed); advance(matchers, tokens) consumes each "
           "row's sampled token and returns one error string per row ('' when accepted).");
  py::class_<Constraint, std::shared_ptr<Constraint>>(m, "Constraint")
      .def(py::init([](const std::shared_ptr<ConstraintSolver>& solver, py::object matcher)
                        -> std::shared_ptr<Constraint> {
             auto py_solver = std::dynamic_pointer_cast<PySolver>(solver);
             if (!py_solver) throw py::type_error("solver must be a _core.ConstraintSolver");
             return std::make_shared<PyConstraint>(py_solver, std::move(matcher));
           }),
           py::arg("solver"), py::arg("matcher"),
           "One request's grammar state (the object the solver's callbacks receive).")
      .def_property_readonly(
          "matcher",
          [](const Constraint& c) { return static_cast<const PyConstraint&>(c).matcher(); },
          "The matcher this constraint was made with.");
}

}  // namespace pyengine
