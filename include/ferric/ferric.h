/* ferric: the public C API. Include this one header. */
#ifndef FERRIC_H
#define FERRIC_H

#include "ferric/autograd.h"
#include "ferric/core.h"
#include "ferric/checkpoint.h"
#include "ferric/data.h"
#include "ferric/hf.h"
#include "ferric/io.h"
#include "ferric/nn.h"
#include "ferric/fused_loss.h"
#include "ferric/ops.h"
#include "ferric/runlog.h"
#include "ferric/tokenizer.h"
#include "ferric/train.h"
#include "ferric/trainer.h"

#endif
