// The grammar glue between Python and the scheduler: a ConstraintSolver whose masks and
// advances are Python callables (llguidance behind them, see pyengine/grammar.py), and a
// Constraint holding one request's matcher.
#pragma once

#include <pybind11/pybind11.h>

namespace pyengine {

// Adds _core.ConstraintSolver(fill_masks, advance) and _core.Constraint(solver, matcher).
void BindConstraints(pybind11::module_& m);

}  // namespace pyengine
