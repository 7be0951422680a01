/* Smoke test: the harness, creation, one op and one backward. */
#include "test.h"

TEST(add_and_backward) {
    int64_t s[2] = {2, 3};
    fe_tensor *a = t_randn(2, s, FE_F64), *b = t_randn(2, s, FE_F64);
    fe_set_requires_grad(a, true);
    fe_tensor *c = fe_sum(fe_mul(a, b), 0, NULL, false);
    CHECK(c != NULL);
    CHECK(fe_backward(c, NULL) == FE_OK);
    CHECK(t_maxdiff(fe_grad(a), b) < 1e-12);
}
