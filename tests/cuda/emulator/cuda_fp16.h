// The CPU emulator stands in for the CUDA header of this name (see emulator.h).
#pragma once

#include "emulator.h"
