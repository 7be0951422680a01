/* Train a two-layer MLP on a toy regression task with plain SGD through the
 * public API, and show the loss falling.
 *
 *   target(x) = tanh(3 x0) + x1 * x2,   x ~ U(-1, 1)^3
 *
 * Exit status 0 when the final loss is under a tenth of the first. */
#include "ferric/ferric.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define IN 3
#define HIDDEN 64
#define BATCH 128
#define STEPS 2000

static fe_tensor *param(int64_t rows, int64_t cols, double std) {
    fe_tensor *t = fe_randn(2, (int64_t[]){rows, cols}, 0.0, std, FE_F32, FE_DEVICE_CPU);
    fe_set_requires_grad(t, true);
    return t;
}

int main(int argc, char **argv) {
    bool quiet = argc > 1 && !strcmp(argv[1], "--quiet");
    fe_manual_seed(1);
    /* parameters are created outside any scope: they live until freed */
    fe_tensor *params[4] = {param(IN, HIDDEN, 1.0 / sqrt(IN)), param(1, HIDDEN, 0.0),
                            param(HIDDEN, 1, 1.0 / sqrt(HIDDEN)), param(1, 1, 0.0)};
    double first = NAN, last = NAN, lr = 0.2;
    for (int step = 0; step < STEPS; step++) {
        fe_scope *s = fe_scope_begin(); /* everything made in the step dies with it */
        fe_tensor *x = fe_rand(2, (int64_t[]){BATCH, IN}, -1.0, 1.0, FE_F32, FE_DEVICE_CPU);
        fe_tensor *x0 = fe_slice(x, 1, 0, 1, 1), *x1 = fe_slice(x, 1, 1, 2, 1);
        fe_tensor *x2 = fe_slice(x, 1, 2, 3, 1);
        fe_tensor *target = fe_add(fe_tanh(fe_scale(x0, 3.0)), fe_mul(x1, x2));
        fe_tensor *h = fe_gelu(fe_add(fe_matmul(x, params[0], false, false), params[1]), true);
        fe_tensor *pred = fe_add(fe_matmul(h, params[2], false, false), params[3]);
        fe_tensor *loss = fe_mse(pred, target);
        if (!loss || fe_backward(loss, NULL) != FE_OK) {
            fprintf(stderr, "mlp: %s\n", fe_last_error());
            return 1;
        }
        double l = fe_item(loss);
        if (step == 0) first = l;
        last = l;
        for (int i = 0; i < 4; i++) { /* SGD: p -= lr * grad */
            fe_add_(params[i], fe_grad(params[i]), -lr);
            fe_zero_grad(params[i]);
        }
        if (!quiet && (step % 200 == 0 || step == STEPS - 1)) printf("step %4d  loss %.5f\n", step, l);
        fe_scope_end(s);
    }
    for (int i = 0; i < 4; i++) fe_free(params[i]);
    printf("first loss %.5f, last loss %.5f: %s\n", first, last,
           last < first / 10 ? "learned" : "did NOT learn");
    return last < first / 10 ? 0 : 1;
}
