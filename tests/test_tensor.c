/* Tensors: creation, dtypes and casts, views, copies, scopes, the generator. */
#include "core/internal.h"
#include "test.h"

#define S(...) (int64_t[]){__VA_ARGS__}

TEST(create_and_query) {
    fe_tensor *t = fe_zeros(3, S(2, 3, 4), FE_F32, FE_DEVICE_CPU);
    CHECK(fe_ndim(t) == 3 && fe_numel(t) == 24 && fe_dim(t, -1) == 4 && fe_is_contiguous(t));
    CHECK(fe_strides(t)[0] == 12 && fe_strides(t)[1] == 4 && fe_strides(t)[2] == 1);
    fe_tensor *o = fe_full(2, S(2, 2), 2.5, FE_F64, FE_DEVICE_CPU);
    CHECK_NEAR(((double *)fe_data(o))[3], 2.5, 0);
    fe_tensor *ar = fe_arange(0, 5, 1, FE_I64, FE_DEVICE_CPU);
    CHECK(fe_numel(ar) == 5 && ((int64_t *)fe_data(ar))[4] == 4);
    fe_tensor *ar2 = fe_arange(1, 2, 0.25, FE_F32, FE_DEVICE_CPU);
    CHECK(fe_numel(ar2) == 4);
    fe_tensor *sc = fe_full(0, NULL, 7, FE_I32, FE_DEVICE_CPU);
    CHECK(fe_numel(sc) == 1 && fe_item(sc) == 7);
    char buf[64];
    CHECK(!strcmp(fe_shape_str(t, buf, sizeof buf), "(2, 3, 4) f32 cpu"));
    CHECK(!strcmp(fe_shape_str(ar, buf, sizeof buf), "(5,) i64 cpu"));
    for (int dt = 0; dt < FE_DTYPE_COUNT; dt++) {
        fe_dtype back;
        CHECK(fe_dtype_parse(fe_dtype_name((fe_dtype)dt), &back) && back == (fe_dtype)dt);
    }
}

TEST(bf16_f16_round_to_nearest_even) {
    /* halfway cases go to the even neighbour */
    CHECK(fe__bf16_to_f32(fe__f32_to_bf16(1.00390625f)) == 1.0f);
    CHECK(fe__bf16_to_f32(fe__f32_to_bf16(1.01171875f)) == 1.015625f);
    CHECK(fe__bf16_to_f32(fe__f32_to_bf16(1.00390625f + 0x1p-23f)) == 1.0078125f); /* just above half */
    CHECK(fe__f16_to_f32(fe__f32_to_f16(1.0f + 0x1p-11f)) == 1.0f);
    CHECK(fe__f16_to_f32(fe__f32_to_f16(1.0f + 3 * 0x1p-11f)) == 1.0f + 0x1p-9f);
    CHECK(fe__f16_to_f32(fe__f32_to_f16(65519.0f)) == 65504.0f);
    CHECK(isinf(fe__f16_to_f32(fe__f32_to_f16(65520.0f))));
    CHECK(fe__f16_to_f32(fe__f32_to_f16(0x1p-25f)) == 0.0f);                 /* tie to even zero */
    CHECK(fe__f16_to_f32(fe__f32_to_f16(3 * 0x1p-25f)) == 0x1p-23f);         /* subnormal tie */
    CHECK(fe__f16_to_f32(fe__f32_to_f16(-0x1p-24f)) == -0x1p-24f);           /* smallest subnormal */
    CHECK(isnan(fe__f16_to_f32(fe__f32_to_f16(NAN))) && isnan(fe__bf16_to_f32(fe__f32_to_bf16(NAN))));
    /* every f16 value survives f16 -> f32 -> f16 */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t x = (uint16_t)h;
        if (((x >> 10) & 31) == 31 && (x & 1023)) continue; /* NaNs */
        bad += fe__f32_to_f16(fe__f16_to_f32(x)) != x;
    }
    CHECK(bad == 0);
}

TEST(casts_between_dtypes) {
    float v[4] = {1.5f, -2.25f, 3.99f, 1e10f};
    fe_tensor *a = fe_from_data(v, 1, S(4), FE_F32, FE_DEVICE_CPU);
    fe_tensor *i = fe_cast(a, FE_I32);
    int32_t *iv = fe_data(i);
    CHECK(iv[0] == 1 && iv[1] == -2 && iv[2] == 3 && iv[3] == 2147483647); /* truncation, saturation */
    fe_tensor *b = fe_cast(a, FE_BF16), *back = fe_cast(b, FE_F32);
    CHECK(t_maxdiff(back, a) / 1e10 < 1e-2);
    double d[4];
    CHECK(fe_to_host(a, d, FE_F64) == FE_OK && d[1] == -2.25);
}

TEST(views_share_storage) {
    fe_tensor *a = fe_arange(0, 24, 1, FE_F32, FE_DEVICE_CPU);
    fe_tensor *r = fe_reshape(a, 3, S(2, 3, 4));
    fe_tensor *p = fe_permute(r, (int[]){2, 0, 1}); /* (4, 2, 3) */
    CHECK(fe_dim(p, 0) == 4 && !fe_is_contiguous(p));
    float out[24];
    fe_to_host(p, out, FE_F32);
    CHECK(out[0] == 0 && out[1] == 4 && out[3] == 12 && out[6] == 1); /* p[i,j,k] = r[j,k,i] */
    fe_tensor *s = fe_slice(r, 2, 1, 4, 2);                          /* columns 1 and 3 */
    fe_to_host(s, out, FE_F32);
    CHECK(out[0] == 1 && out[1] == 3 && out[2] == 5 && out[5] == 11);
    fe_tensor *neg = fe_slice(r, -1, -2, 100, 1); /* negative start, clamped end */
    CHECK(fe_dim(neg, -1) == 2);
    fe_tensor *e = fe_expand(fe_reshape(fe_arange(0, 3, 1, FE_F32, FE_DEVICE_CPU), 2, S(3, 1)), 3, S(2, 3, 4));
    fe_to_host(e, out, FE_F32);
    CHECK(out[0] == 0 && out[4] == 1 && out[23] == 2 && fe_strides(e)[0] == 0);
    /* reshape of a non-contiguous view copies */
    fe_tensor *rp = fe_reshape(p, 2, S(8, 3));
    float o2[24];
    fe_to_host(rp, o2, FE_F32);
    fe_to_host(p, out, FE_F32);
    CHECK(!memcmp(o2, out, sizeof out));
    /* a view that can stay a view: merging contiguous trailing dims of a slice */
    fe_tensor *rows = fe_slice(r, 0, 1, 2, 1); /* (1, 3, 4) */
    fe_tensor *flat = fe_reshape(rows, 1, S(12));
    CHECK(fe_data(flat) == (float *)fe_data(a) + 12);
    /* writes through a view land in the base */
    fe_fill_(s, -1);
    fe_to_host(a, out, FE_F32);
    CHECK(out[1] == -1 && out[3] == -1 && out[2] == 2);
    fe_tensor *sq = fe_squeeze(fe_unsqueeze(a, 0), 0);
    CHECK(fe_ndim(sq) == 1 && fe_dim(sq, 0) == 24);
}

TEST(concat_and_contiguous) {
    fe_tensor *a = fe_full(2, S(2, 3), 1, FE_F32, FE_DEVICE_CPU);
    fe_tensor *b = fe_full(2, S(2, 2), 2, FE_F32, FE_DEVICE_CPU);
    fe_tensor *c = fe_concat(2, (fe_tensor *[]){a, b}, 1);
    float out[10];
    fe_to_host(c, out, FE_F32);
    CHECK(fe_dim(c, 1) == 5 && out[2] == 1 && out[3] == 2 && out[5] == 1);
    fe_tensor *many[9];
    for (int i = 0; i < 9; i++) many[i] = fe_full(1, S(1), i, FE_F64, FE_DEVICE_CPU);
    fe_tensor *m = fe_concat(9, many, 0);
    double dv[9];
    fe_to_host(m, dv, FE_F64);
    CHECK(fe_numel(m) == 9 && dv[0] == 0 && dv[8] == 8 && dv[5] == 5);
}

TEST(scopes_release_everything) {
    int64_t before = fe_live_tensors();
    fe_scope *s = fe_scope_begin();
    fe_tensor *a = fe_ones(1, S(100), FE_F32, FE_DEVICE_CPU);
    fe_tensor *kept = NULL;
    for (int i = 0; i < 10; i++) a = fe_add(a, a);
    kept = fe_keep(fe_scale(a, 0.5));
    fe_scope *inner = fe_scope_begin();
    (void)fe_zeros(1, S(5), FE_F32, FE_DEVICE_CPU);
    (void)inner; /* ended by the outer scope */
    fe_scope_end(s);
    CHECK(fe_live_tensors() == before + 1);
    CHECK_NEAR(((float *)fe_data(kept))[7], 512.0, 0);
    fe_free(kept);
    CHECK(fe_live_tensors() == before);
    size_t cur = fe_device_mem_current(FE_DEVICE_CPU);
    fe_tensor *big = fe_keep(fe_empty(1, S(1 << 20), FE_F32, FE_DEVICE_CPU));
    CHECK(fe_device_mem_current(FE_DEVICE_CPU) >= cur + (4u << 20));
    CHECK(fe_device_mem_peak(FE_DEVICE_CPU) >= cur + (4u << 20));
    fe_free(big);
    CHECK(fe_device_mem_current(FE_DEVICE_CPU) == cur);
}

void fe__philox(uint64_t seed, uint64_t ctr, uint32_t out[4]);

TEST(philox_and_random_tensors) {
    /* Random123's known answer for Philox4x32-10 with zero key and counter */
    uint32_t o[4];
    fe__philox(0, 0, o);
    CHECK(o[0] == 0x6627e8d5u && o[1] == 0xe169c58du && o[2] == 0xbc57ac4cu && o[3] == 0x9b00dbd8u);
    fe_manual_seed(42);
    fe_tensor *a = fe_rand(1, S(10000), 0, 1, FE_F64, FE_DEVICE_CPU);
    fe_tensor *n = fe_randn(1, S(10000), 0, 1, FE_F64, FE_DEVICE_CPU);
    fe_manual_seed(42);
    fe_tensor *b = fe_rand(1, S(10000), 0, 1, FE_F64, FE_DEVICE_CPU);
    fe_rng_state st = fe_rng_get_state();
    fe_tensor *n2 = fe_randn(1, S(10000), 0, 1, FE_F64, FE_DEVICE_CPU);
    CHECK(t_maxdiff(a, b) == 0 && t_maxdiff(n, n2) == 0);
    fe_rng_set_state(st);
    fe_tensor *n3 = fe_randn(1, S(10000), 0, 1, FE_F64, FE_DEVICE_CPU);
    CHECK(t_maxdiff(n3, n2) == 0);
    double mean = fe_item(fe_mean(a, 0, NULL, false)), nm = fe_item(fe_mean(n, 0, NULL, false));
    double nv = fe_item(fe_mean(fe_square(n), 0, NULL, false));
    CHECK_NEAR(mean, 0.5, 0.02);
    CHECK_NEAR(nm, 0.0, 0.03);
    CHECK_NEAR(nv, 1.0, 0.05);
    CHECK(fe_item(fe_max(a, 0, NULL, false)) < 1.0);
    CHECK(fe_item(fe_max(fe_neg(a), 0, NULL, false)) <= 0.0);
}

TEST(elementwise_values) {
    double x[6] = {-2, -0.5, 0, 0.5, 1, 3};
    fe_tensor *a = fe_from_data(x, 1, S(6), FE_F64, FE_DEVICE_CPU);
    double out[6];
    fe_to_host(fe_gelu(a, false), out, FE_F64);
    CHECK_NEAR(out[4], 0.8413447460685429, 1e-12); /* x * Phi(x) at 1 */
    fe_to_host(fe_gelu(a, true), out, FE_F64);
    CHECK_NEAR(out[4], 0.8411919906082768, 1e-12);
    fe_to_host(fe_silu(a), out, FE_F64);
    CHECK_NEAR(out[0], -2 / (1 + exp(2.0)), 1e-12);
    fe_to_host(fe_sigmoid(fe_scale(a, 400)), out, FE_F64); /* no overflow to NaN */
    CHECK(out[0] == 0 && out[5] == 1);
    fe_to_host(fe_softmax(a, 0), out, FE_F64);
    double s = 0;
    for (int i = 0; i < 6; i++) s += out[i];
    CHECK_NEAR(s, 1.0, 1e-12);
    fe_tensor *big = fe_full(1, S(3), 1000, FE_F32, FE_DEVICE_CPU);
    float f[3];
    fe_to_host(fe_softmax(big, 0), f, FE_F32); /* stable for large logits */
    CHECK_NEAR(f[0], 1.0 / 3, 1e-6);
    fe_tensor *m = fe_matmul(fe_reshape(fe_arange(0, 6, 1, FE_F32, FE_DEVICE_CPU), 2, S(2, 3)),
                             fe_reshape(fe_arange(0, 6, 1, FE_F32, FE_DEVICE_CPU), 2, S(3, 2)), false, false);
    float mv[4];
    fe_to_host(m, mv, FE_F32);
    CHECK(mv[0] == 10 && mv[1] == 13 && mv[2] == 28 && mv[3] == 40);
}

TEST(half_precision_ops_on_cpu) {
    fe_tensor *a = t_randn(2, S(17, 33), FE_F32), *b = t_randn(2, S(33, 9), FE_F32);
    fe_tensor *ref = fe_matmul(a, b, false, false);
    fe_tensor *hb = fe_matmul(fe_cast(a, FE_BF16), fe_cast(b, FE_BF16), false, false);
    fe_tensor *hf = fe_matmul(fe_cast(a, FE_F16), fe_cast(b, FE_F16), false, false);
    CHECK(fe_dtype_of(hb) == FE_BF16);
    CHECK(t_relerr(hb, ref) < 1e-2 && t_relerr(hf, ref) < 2e-3);
    fe_tensor *r1 = fe_rmsnorm(a, NULL, 1e-6), *r2 = fe_rmsnorm(fe_cast(a, FE_BF16), NULL, 1e-6);
    CHECK(t_relerr(r2, r1) < 1e-2);
}

TEST(inplace_updates) {
    fe_tensor *a = fe_ones(2, S(2, 3), FE_F32, FE_DEVICE_CPU);
    fe_tensor *b = fe_arange(0, 3, 1, FE_F32, FE_DEVICE_CPU);
    CHECK(fe_add_(a, b, 2.0) == FE_OK); /* broadcast row */
    CHECK(fe_scale_(a, 0.5) == FE_OK);
    float v[6];
    fe_to_host(a, v, FE_F32);
    CHECK(v[0] == 0.5f && v[2] == 2.5f && v[5] == 2.5f);
    fe_tensor *g = fe_ones(1, S(3), FE_F64, FE_DEVICE_CPU);
    CHECK(fe_add_(g, b, 1.0) == FE_OK); /* mixed dtypes accumulate */
    CHECK(fe_item(fe_sum(g, 0, NULL, false)) == 6.0);
}
