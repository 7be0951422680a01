/* Learning-rate schedules as pure functions of the step. */
#include "ferric/train.h"

#include <math.h>

static double cosine(double lr, double min_lr, double frac) {
    if (frac < 0) frac = 0;
    if (frac > 1) frac = 1;
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + cos(M_PI * frac));
}

double fe_lr_at(const fe_lr_schedule *s, int64_t step) {
    if (!s) return 0.0;
    if (step < 0) step = 0;
    switch (s->kind) {
    case FE_LR_CONSTANT: return s->lr;
    case FE_LR_LINEAR_WARMUP:
        if (s->warmup_steps > 0 && step < s->warmup_steps)
            return s->lr * (double)(step + 1) / (double)s->warmup_steps;
        return s->lr;
    case FE_LR_COSINE:
        if (s->total_steps <= 0) return s->lr;
        return cosine(s->lr, s->min_lr, (double)step / (double)s->total_steps);
    case FE_LR_WARMUP_COSINE: {
        if (s->warmup_steps > 0 && step < s->warmup_steps)
            return s->lr * (double)(step + 1) / (double)s->warmup_steps;
        int64_t decay = s->total_steps - (s->warmup_steps > 0 ? s->warmup_steps : 0);
        if (decay <= 0) return s->min_lr;
        return cosine(s->lr, s->min_lr,
                      (double)(step - (s->warmup_steps > 0 ? s->warmup_steps : 0)) / (double)decay);
    }
    }
    return s->lr;
}
