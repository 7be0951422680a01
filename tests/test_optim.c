/* Optimizers, schedules, clipping and the loss scaler against hand-computed values. */
#include "ferric/nn.h"
#include "ferric/train.h"
#include "test.h"

/* A registry with two f64 parameters: "w" (decayed) = [1, -2] and "norm.weight"
 * (no decay) = [0.5, 3]. */
static fe_params *two_params(void) {
    fe_params *p = fe_params_new();
    double w[2] = {1, -2}, n[2] = {0.5, 3};
    int64_t s = 2;
    fe_tensor *a = fe_from_data(w, 1, &s, FE_F64, FE_DEVICE_CPU);
    fe_tensor *b = fe_from_data(n, 1, &s, FE_F64, FE_DEVICE_CPU);
    fe_set_requires_grad(a, true), fe_set_requires_grad(b, true);
    fe_params_add(p, "w", a, false);
    fe_params_add(p, "norm.weight", b, true);
    return p;
}

/* Give every parameter the gradient c (two values) by back-propagating sum(c * p). */
static void plant_grads(fe_params *p, const double *c) {
    fe_scope *s = fe_scope_begin();
    int64_t n = 2;
    for (int i = 0; i < fe_params_count(p); i++) {
        fe_tensor *t = fe_params_at(p, i);
        fe_tensor *ct = fe_cast(fe_from_data(c, 1, &n, FE_F64, FE_DEVICE_CPU), fe_dtype_of(t));
        fe_backward(fe_sum(fe_mul(ct, t), 0, NULL, false), NULL);
    }
    fe_scope_end(s);
}

static double at(fe_tensor *t, int i) {
    double v[16];
    fe_to_host(t, v, FE_F64);
    return v[i];
}

static const double grads[3][2] = {{0.5, 1.0}, {-1.0, 0.25}, {2.0, -0.5}};

TEST(sgd_momentum_weight_decay_three_steps) {
    fe_params *p = two_params();
    fe_sgd_config c = {.momentum = 0.9, .weight_decay = 0.1};
    fe_optimizer *o = fe_sgd_new(p, &c);
    CHECK(o != NULL);
    /* hand-computed first step for w: g = [0.5 + 0.1*1, 1 + 0.1*(-2)] = [0.6, 0.8];
     * buf = g; w = [1 - 0.1*0.6, -2 - 0.1*0.8] = [0.94, -2.08].
     * norm.weight is not decayed: g = [0.5, 1]; w = [0.5 - 0.05, 3 - 0.1] = [0.45, 2.9]. */
    plant_grads(p, grads[0]);
    CHECK(fe_optimizer_step(o, 0.1) == FE_OK);
    CHECK_NEAR(at(fe_params_at(p, 0), 0), 0.94, 1e-14);
    CHECK_NEAR(at(fe_params_at(p, 0), 1), -2.08, 1e-14);
    CHECK_NEAR(at(fe_params_at(p, 1), 0), 0.45, 1e-14);
    CHECK_NEAR(at(fe_params_at(p, 1), 1), 2.9, 1e-14);
    /* steps 2 and 3 by the formula: g = grad + wd*p (decayed only); buf = 0.9 buf + g; p -= lr buf
     */
    double w[2][2] = {{0.94, -2.08}, {0.45, 2.9}}, buf[2][2] = {{0.6, 0.8}, {0.5, 1.0}};
    for (int k = 1; k < 3; k++) {
        fe_params_zero_grad(p);
        plant_grads(p, grads[k]);
        CHECK(fe_optimizer_step(o, 0.1) == FE_OK);
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) {
                double g = grads[k][j] + (i == 0 ? 0.1 * w[i][j] : 0.0);
                buf[i][j] = 0.9 * buf[i][j] + g;
                w[i][j] -= 0.1 * buf[i][j];
            }
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            CHECK_NEAR(at(fe_params_at(p, i), j), w[i][j], 1e-14);
    /* step 2 for w[0] spelled out: g = -1 + 0.1*0.94 = -0.906; buf = 0.54 - 0.906 = -0.366;
     * w = 0.94 + 0.0366 = 0.9766 */
    CHECK(fe_optimizer_steps(o) == 3);
    fe_state_item it;
    CHECK(fe_optimizer_state_count(o) == 3);
    CHECK(fe_optimizer_state_item(o, 1, &it) == FE_OK && !strcmp(it.name, "w.momentum_buffer"));
    CHECK_NEAR(at(it.tensor, 0), buf[0][0], 1e-14);
    fe_optimizer_free(o);
    fe_params_free(p);
}

TEST(sgd_step_two_by_hand) {
    fe_params *p = two_params();
    fe_sgd_config c = {.momentum = 0.9, .weight_decay = 0.1};
    fe_optimizer *o = fe_sgd_new(p, &c);
    plant_grads(p, grads[0]);
    fe_optimizer_step(o, 0.1);
    fe_params_zero_grad(p);
    plant_grads(p, grads[1]);
    fe_optimizer_step(o, 0.1);
    CHECK_NEAR(at(fe_params_at(p, 0), 0), 0.9766, 1e-14);
    fe_optimizer_free(o);
    fe_params_free(p);
}

TEST(adamw_three_steps) {
    fe_params *p = two_params();
    fe_adamw_config c = {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1};
    fe_optimizer *o = fe_adamw_new(p, &c);
    CHECK(o != NULL);
    /* step 1 by hand for w[0] = 1, g = 0.5, lr = 0.1:
     * decay: 1 * (1 - 0.1*0.1) = 0.99; m = 0.05, v = 0.00025; m^ = 0.5, v^ = 0.25;
     * w = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.89 + 1e-9 (to 1e-15). */
    plant_grads(p, grads[0]);
    CHECK(fe_optimizer_step(o, 0.1) == FE_OK);
    CHECK_NEAR(at(fe_params_at(p, 0), 0), 0.99 - 0.1 * 0.5 / (0.5 + 1e-8), 1e-15);
    CHECK_NEAR(at(fe_params_at(p, 0), 0), 0.89, 1e-8);
    /* no decay for norm.weight: 0.5 - 0.1 * 0.5/(0.5 + 1e-8) */
    CHECK_NEAR(at(fe_params_at(p, 1), 0), 0.5 - 0.1 * 0.5 / (0.5 + 1e-8), 1e-15);
    /* steps 2, 3 by the formula */
    double w[2][2] = {{1, -2}, {0.5, 3}}, m[2][2] = {{0}}, v[2][2] = {{0}};
    for (int k = 0; k < 3; k++) {
        if (k > 0) {
            fe_params_zero_grad(p);
            plant_grads(p, grads[k]);
            CHECK(fe_optimizer_step(o, 0.05) == FE_OK);
        }
        double lr = k == 0 ? 0.1 : 0.05, t = k + 1;
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) {
                double g = grads[k][j];
                if (i == 0) w[i][j] *= 1 - lr * 0.1;
                m[i][j] = 0.9 * m[i][j] + 0.1 * g;
                v[i][j] = 0.999 * v[i][j] + 0.001 * g * g;
                double mh = m[i][j] / (1 - pow(0.9, t)), vh = v[i][j] / (1 - pow(0.999, t));
                w[i][j] -= lr * mh / (sqrt(vh) + 1e-8);
            }
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            CHECK_NEAR(at(fe_params_at(p, i), j), w[i][j], 1e-13);
    /* state is reachable by name */
    CHECK(fe_optimizer_state_count(o) == 5);
    fe_state_item it;
    CHECK(fe_optimizer_state_item(o, 0, &it) == FE_OK && !strcmp(it.name, "step") && it.value == 3);
    CHECK(fe_optimizer_state_item(o, 2, &it) == FE_OK && !strcmp(it.name, "w.exp_avg_sq"));
    CHECK_NEAR(at(it.tensor, 1), v[0][1], 1e-15);
    CHECK(fe_optimizer_state_item(o, 3, &it) == FE_OK && !strcmp(it.name, "norm.weight.exp_avg"));
    CHECK_NEAR(at(it.tensor, 0), m[1][0], 1e-15);
    CHECK(fe_optimizer_set_scalar(o, "step", 7) == FE_OK && fe_optimizer_steps(o) == 7);
    CHECK_ERROR(fe_optimizer_set_scalar(o, "lr", 1) != FE_OK, "no scalar");
    CHECK_ERROR(fe_optimizer_state_item(o, 5, &it) != FE_OK, "no item");
    fe_optimizer_free(o);
    fe_params_free(p);
}

TEST(adamw_state_is_f32_for_bf16_params) {
    fe_params *p = fe_params_new();
    int64_t s = 3;
    int i = fe_params_add_full(p, "x", 1, &s, 1.0, FE_BF16, FE_DEVICE_CPU, false);
    CHECK(i == 0);
    fe_optimizer *o = fe_adamw_new(p, NULL);
    fe_state_item it;
    CHECK(fe_optimizer_state_item(o, 1, &it) == FE_OK && fe_dtype_of(it.tensor) == FE_F32);
    fe_scope *sc = fe_scope_begin();
    fe_backward(fe_sum(fe_params_at(p, 0), 0, NULL, false), NULL);
    fe_scope_end(sc);
    CHECK(fe_optimizer_step(o, 0.125) == FE_OK);
    /* 1 * (1 - 0.125 * 0.01) - 0.125 * 1/(1 + 1e-8) = 0.87375..., rounded to bf16 */
    CHECK_NEAR(at(fe_params_at(p, 0), 2), 0.875, 4e-3);
    fe_optimizer_free(o);
    fe_params_free(p);
}

TEST(optimizer_bad_arguments) {
    fe_params *p = two_params();
    CHECK_ERROR(fe_adamw_new(p, &(fe_adamw_config){.beta1 = 1.0}) == NULL, "betas");
    CHECK_ERROR(fe_sgd_new(p, &(fe_sgd_config){.momentum = -1}) == NULL, "momentum");
    CHECK_ERROR(fe_sgd_new(NULL, NULL) == NULL, "NULL");
    fe_optimizer *o = fe_sgd_new(p, NULL);
    CHECK_ERROR(fe_optimizer_step(o, NAN) != FE_OK, "learning rate");
    /* no grads: nothing moves */
    CHECK(fe_optimizer_step(o, 1.0) == FE_OK);
    CHECK_NEAR(at(fe_params_at(p, 0), 0), 1.0, 0);
    fe_optimizer_free(o);
    fe_params_free(p);
}

TEST(lr_schedules) {
    fe_lr_schedule c = {FE_LR_CONSTANT, 0.3, 0, 0, 0};
    CHECK_NEAR(fe_lr_at(&c, 0), 0.3, 0);
    CHECK_NEAR(fe_lr_at(&c, 1000), 0.3, 0);
    fe_lr_schedule w = {FE_LR_LINEAR_WARMUP, 1.0, 0, 4, 0};
    CHECK_NEAR(fe_lr_at(&w, 0), 0.25, 1e-15);
    CHECK_NEAR(fe_lr_at(&w, 1), 0.5, 1e-15);
    CHECK_NEAR(fe_lr_at(&w, 3), 1.0, 1e-15);
    CHECK_NEAR(fe_lr_at(&w, 10), 1.0, 1e-15);
    fe_lr_schedule cs = {FE_LR_COSINE, 1.0, 0.1, 0, 10};
    CHECK_NEAR(fe_lr_at(&cs, 0), 1.0, 1e-15);
    CHECK_NEAR(fe_lr_at(&cs, 2), 0.914057647468726, 1e-12); /* 0.1 + 0.45 (1 + cos(0.2 pi)) */
    CHECK_NEAR(fe_lr_at(&cs, 5), 0.55, 1e-15);
    CHECK_NEAR(fe_lr_at(&cs, 10), 0.1, 1e-15);
    CHECK_NEAR(fe_lr_at(&cs, 50), 0.1, 1e-15);
    fe_lr_schedule wc = {FE_LR_WARMUP_COSINE, 1.0, 0.0, 2, 12};
    CHECK_NEAR(fe_lr_at(&wc, 0), 0.5, 1e-15);
    CHECK_NEAR(fe_lr_at(&wc, 1), 1.0, 1e-15);
    CHECK_NEAR(fe_lr_at(&wc, 2), 1.0, 1e-15);
    CHECK_NEAR(fe_lr_at(&wc, 7), 0.5, 1e-15);               /* halfway through 10 decay steps */
    CHECK_NEAR(fe_lr_at(&wc, 4), 0.904508497187474, 1e-12); /* 0.5 (1 + cos(0.2 pi)) */
    CHECK_NEAR(fe_lr_at(&wc, 12), 0.0, 1e-15);
    CHECK_NEAR(fe_lr_at(&wc, 100), 0.0, 1e-15);
}

TEST(clip_grad_norm_scales_to_max) {
    fe_params *p = fe_params_new();
    int64_t s2 = 2, s1 = 1;
    fe_params_add_full(p, "a", 1, &s2, 1.0, FE_F64, FE_DEVICE_CPU, false);
    fe_params_add_full(p, "b", 1, &s1, 1.0, FE_F64, FE_DEVICE_CPU, false);
    fe_params_add_full(p, "unused", 1, &s1, 1.0, FE_F64, FE_DEVICE_CPU, false);
    /* grads a = [3, 4], b = [12]: norm sqrt(9 + 16 + 144) = 13 */
    double ca[2] = {3, 4}, cb[1] = {12};
    fe_backward(fe_sum(fe_mul(fe_from_data(ca, 1, &s2, FE_F64, FE_DEVICE_CPU), fe_params_at(p, 0)),
                       0, NULL, false),
                NULL);
    fe_backward(fe_sum(fe_mul(fe_from_data(cb, 1, &s1, FE_F64, FE_DEVICE_CPU), fe_params_at(p, 1)),
                       0, NULL, false),
                NULL);
    fe_tensor *n0 = fe_clip_grad_norm(p, 100.0); /* below the limit: unchanged */
    CHECK_NEAR(fe_item(n0), 13.0, 1e-14);
    CHECK_NEAR(at(fe_grad(fe_params_at(p, 0)), 1), 4.0, 0);
    fe_tensor *n1 = fe_clip_grad_norm(p, 6.5);
    CHECK_NEAR(fe_item(n1), 13.0, 1e-14);
    double k = 6.5 / (13.0 + 1e-6);
    CHECK_NEAR(at(fe_grad(fe_params_at(p, 0)), 0), 3 * k, 1e-14);
    CHECK_NEAR(at(fe_grad(fe_params_at(p, 1)), 0), 12 * k, 1e-14);
    fe_tensor *n2 = fe_clip_grad_norm(p, 0); /* only measures */
    CHECK_NEAR(fe_item(n2), 13 * k, 1e-12);
    CHECK(fe_grad(fe_params_at(p, 2)) == NULL);
    fe_params_free(p);
}

TEST(grad_scaler_skips_and_recovers) {
    fe_grad_scaler_config c = fe_grad_scaler_defaults();
    CHECK(c.init_scale == 65536 && c.growth_factor == 2 && c.backoff_factor == 0.5 &&
          c.growth_interval == 2000);
    c.init_scale = 8;
    c.growth_interval = 3;
    fe_grad_scaler *s = fe_grad_scaler_new(&c);
    fe_params *p = fe_params_new();
    int64_t n = 2;
    fe_params_add_full(p, "x", 1, &n, 1.0, FE_F32, FE_DEVICE_CPU, false);
    fe_params_add_full(p, "y", 1, &n, 1.0, FE_F16, FE_DEVICE_CPU, false);
    bool ok = false;
    CHECK_ERROR(fe_grad_scaler_update(s, &ok) != FE_OK, "before any unscale");
    /* the scaled loss carries the scale */
    fe_tensor *l = fe_sum(fe_params_at(p, 0), 0, NULL, false);
    CHECK_NEAR(fe_item(fe_grad_scaler_scale(s, l)), 16.0, 0);
    double clean[2] = {8, 16}, inf[2] = {INFINITY, 1}, nan[2] = {1, NAN};
    const double *plan[6] = {clean, inf, nan, clean, clean, clean};
    double want_scale[6] = {8, 4, 2, 2, 2, 4};
    bool want_ok[6] = {true, false, false, true, true, true};
    for (int k = 0; k < 6; k++) {
        fe_params_zero_grad(p);
        plant_grads(p, plan[k]);
        double before = fe_grad_scaler_get_scale(s);
        CHECK(fe_grad_scaler_unscale(s, p) == FE_OK);
        CHECK_NEAR(fe_item(fe_grad_scaler_found_inf(s)), want_ok[k] ? 0.0 : 1.0, 0);
        if (want_ok[k]) /* grads were divided by the scale */
            CHECK_NEAR(at(fe_grad(fe_params_at(p, 1)), 1), plan[k][1] / before, 1e-3);
        CHECK(fe_grad_scaler_update(s, &ok) == FE_OK);
        CHECK(ok == want_ok[k]);
        CHECK_NEAR(fe_grad_scaler_get_scale(s), want_scale[k], 0);
    }
    fe_state_item it;
    CHECK(fe_grad_scaler_state_item(s, 0, &it) == FE_OK && !strcmp(it.name, "scale") &&
          it.value == 4);
    CHECK(fe_grad_scaler_state_item(s, 1, &it) == FE_OK && it.value == 0);
    CHECK(fe_grad_scaler_set_scalar(s, "growth_tracker", 2) == FE_OK);
    fe_params_zero_grad(p);
    plant_grads(p, clean);
    fe_grad_scaler_unscale(s, p);
    fe_grad_scaler_update(s, &ok);
    CHECK(ok && fe_grad_scaler_get_scale(s) == 8);
    CHECK_ERROR(fe_grad_scaler_new(&(fe_grad_scaler_config){.init_scale = 0}) == NULL,
                "init_scale");
    fe_params_free(p);
    fe_grad_scaler_free(s);
}

TEST(grad_accum_loss_scales) {
    int64_t s = 1;
    fe_tensor *x = fe_full(1, &s, 6.0, FE_F64, FE_DEVICE_CPU);
    CHECK_NEAR(fe_item(fe_grad_accum_loss(x, 3)), 2.0, 1e-15);
    CHECK_ERROR(fe_grad_accum_loss(x, 0) == NULL, "k must be");
}

TEST(params_registry) {
    fe_params *p = two_params();
    CHECK(fe_params_count(p) == 2 && fe_params_numel(p) == 4);
    CHECK(fe_params_find(p, "norm.weight") == 1 && fe_params_no_decay(p, 1) &&
          !fe_params_no_decay(p, 0));
    CHECK(fe_params_get(p, "w") == fe_params_at(p, 0));
    CHECK_ERROR(fe_params_get(p, "missing") == NULL, "missing");
    int64_t s = 2;
    CHECK_ERROR(fe_params_add(p, "w", fe_zeros(1, &s, FE_F64, FE_DEVICE_CPU), false) < 0,
                "already exists");
    int64_t s3 = 3;
    CHECK_ERROR(fe_params_replace(p, 0, fe_zeros(1, &s3, FE_F64, FE_DEVICE_CPU)) != FE_OK,
                "is (2,)");
    CHECK(fe_params_replace(p, 0, fe_zeros(1, &s, FE_F64, FE_DEVICE_CPU)) == FE_OK);
    CHECK_NEAR(at(fe_params_at(p, 0), 0), 0.0, 0);
    CHECK(fe_params_name(p, 5) == NULL && fe_params_at(p, -1) == NULL);
    fe_params_free(p);
}
