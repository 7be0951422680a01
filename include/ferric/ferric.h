/* ferric: the public C API. Include this one header. */
#ifndef FERRIC_H
#define FERRIC_H

#include "ferric/autograd.h"
#include "ferric/core.h"
#include "ferric/data.h"
#include "ferric/ops.h"

#endif
