/* Bad input gives a clear error naming the problem, never a crash. */
#include "test.h"

#define S(...) (int64_t[]){__VA_ARGS__}

TEST(mismatched_shapes) {
    fe_tensor *a = t_randn(2, S(2, 3), FE_F32), *b = t_randn(2, S(4, 3), FE_F32);
    CHECK_ERROR(fe_add(a, b) == NULL, "do not broadcast");
    CHECK_ERROR(fe_matmul(a, b, false, false) == NULL, "inner dims differ");
    CHECK_ERROR(fe_reshape(a, 2, S(4, 2)) == NULL, "cannot view");
    CHECK_ERROR(fe_silu_gate(a, b) == NULL, "shapes differ");
    CHECK_ERROR(fe_rmsnorm(a, t_randn(1, S(4), FE_F32), 1e-5) == NULL, "weight");
    CHECK_ERROR(fe_linear(a, t_randn(2, S(5, 4), FE_F32), NULL) == NULL, "does not fit weight");
    CHECK_ERROR(fe_concat(2, (fe_tensor *[]){a, t_randn(2, S(2, 4), FE_F32)}, 0) == NULL, "does not fit");
    CHECK_ERROR(fe_sdpa(a, a, a, true, 0) == NULL, "expected q (B, Hq, T, D)");
    CHECK_ERROR(fe_sum(a, 1, (int[]){2}, false) == NULL, "out of range");
    CHECK_ERROR(fe_permute(a, (int[]){0, 0}) == NULL, "not a permutation");
    CHECK_ERROR(fe_expand(a, 2, S(2, 5)) == NULL, "cannot expand");
    CHECK_ERROR(fe_empty(9, S(1, 1, 1, 1, 1, 1, 1, 1, 1), FE_F32, FE_DEVICE_CPU) == NULL, "rank 9");
    CHECK_ERROR(fe_empty(1, S(-3), FE_F32, FE_DEVICE_CPU) == NULL, "negative size");
    CHECK_ERROR(fe_backward(fe_mul(a, a), NULL) != FE_OK, "does not require grad");
    CHECK_ERROR(fe_mse(a, b) == NULL, "shapes differ");
}

TEST(wrong_dtypes) {
    fe_tensor *f = t_randn(1, S(4), FE_F32), *d = t_randn(1, S(4), FE_F64);
    fe_tensor *i = fe_zeros(1, S(4), FE_I32, FE_DEVICE_CPU);
    CHECK_ERROR(fe_add(f, d) == NULL, "dtypes differ (f32 and f64)");
    CHECK_ERROR(fe_exp(i) == NULL, "needs a float tensor, got i32");
    CHECK_ERROR(fe_set_requires_grad(i, true) != FE_OK, "i32 tensors cannot require grad");
    CHECK_ERROR(fe_embedding(t_randn(2, S(5, 3), FE_F32), f) == NULL, "indices must be i32 or i64");
    CHECK_ERROR(fe_cross_entropy(t_randn(2, S(4, 3), FE_F32), f, -100) == NULL, "i32 or i64, not f32");
    CHECK_ERROR(fe_rand(1, S(3), 0, 1, FE_I64, FE_DEVICE_CPU) == NULL, "float dtype");
}

TEST(index_out_of_range) {
    fe_tensor *w = t_randn(2, S(5, 3), FE_F32);
    int32_t bad[3] = {1, 5, 0}, neg[2] = {-1, 0};
    CHECK_ERROR(fe_embedding(w, fe_from_data(bad, 1, S(3), FE_I32, FE_DEVICE_CPU)) == NULL,
                "index 5 at position 1 is out of range for 5 rows");
    CHECK_ERROR(fe_embedding(w, fe_from_data(neg, 1, S(2), FE_I32, FE_DEVICE_CPU)) == NULL,
                "index -1");
    int64_t t[2] = {0, 9};
    CHECK_ERROR(fe_cross_entropy(t_randn(2, S(2, 4), FE_F32), fe_from_data(t, 1, S(2), FE_I64, FE_DEVICE_CPU), -100) == NULL,
                "target 9 at row 1 is out of range for 4 classes");
}

TEST(null_propagates_through_a_chain) {
    fe_tensor *a = t_randn(2, S(2, 3), FE_F32), *b = t_randn(2, S(4, 3), FE_F32);
    fe_clear_error();
    /* the first failure's message survives the NULLs that follow it */
    fe_tensor *r = fe_relu(fe_exp(fe_mul(fe_add(a, b), a)));
    CHECK(r == NULL);
    CHECK(strstr(fe_last_error(), "add: shapes") != NULL);
    fe_clear_error();
    CHECK(fe_sum(NULL, 0, NULL, false) == NULL && strstr(fe_last_error(), "sum: input 0 is NULL"));
    CHECK(fe_backward(NULL, NULL) == FE_ERR_ARG);
    CHECK(isnan(fe_item(NULL)));
    fe_free(NULL);
    fe_clear_error();
}

TEST(bad_arguments) {
    fe_tensor *a = t_randn(2, S(2, 3), FE_F32);
    CHECK_ERROR(fe_dropout(a, 1.0, true) == NULL, "outside [0, 1)");
    CHECK_ERROR(fe_slice(a, 0, 0, 1, 0) == NULL, "step 0");
    CHECK_ERROR(fe_arange(0, 5, -1, FE_F32, FE_DEVICE_CPU) == NULL, "cannot go from");
    CHECK_ERROR(fe_rope(a, fe_rope_inv_freq(4, 1e4, FE_DEVICE_CPU), 0, 0) == NULL, "even last dim");
    CHECK_ERROR(fe_rope_inv_freq(5, 1e4, FE_DEVICE_CPU) == NULL, "must be even");
    CHECK_ERROR(fe_item(a) != fe_item(a), "6 elements, not 1");
    CHECK_ERROR(fe_copy_(a, t_randn(1, S(6), FE_F32)) != FE_OK, "shapes differ");
    CHECK_ERROR(fe_checkpoint(NULL, NULL, NULL, 0) == NULL, "needs a function");
    fe_device dev;
    CHECK(!fe_device_parse("tpu", &dev) && !fe_device_parse("cuda:x", &dev) && fe_device_parse("cuda:1", &dev) && dev.index == 1);
    if (!fe_device_available(FE_CUDA))
        CHECK_ERROR(fe_empty(1, S(2), FE_F32, (fe_device){FE_CUDA, 0}) == NULL, "not available");
}

TEST(out_of_memory_is_an_error) {
    /* 2^60 bytes cannot be allocated: a clean error, no crash */
    CHECK_ERROR(fe_empty(2, S(1LL << 29, 1LL << 29), FE_F32, FE_DEVICE_CPU) == NULL, "out of");
}
