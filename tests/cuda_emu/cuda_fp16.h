/* Stand-in for the CUDA header of this name: see cuda_runtime.h here. */
#pragma once
#include "cuda_runtime.h"
