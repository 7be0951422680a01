/* Dtype names, sizes and float conversions (round-to-nearest-even). */
#include "core/internal.h"

#include <math.h>
#include <strings.h>

static const struct {
    const char *name;
    size_t size;
} k_dtypes[FE_DTYPE_COUNT] = {
    [FE_F32] = {"f32", 4}, [FE_F64] = {"f64", 8}, [FE_F16] = {"f16", 2}, [FE_BF16] = {"bf16", 2},
    [FE_I32] = {"i32", 4}, [FE_I64] = {"i64", 8}, [FE_U8] = {"u8", 1},   [FE_I8] = {"i8", 1},
};

size_t fe_dtype_size(fe_dtype dt) { return (unsigned)dt < FE_DTYPE_COUNT ? k_dtypes[dt].size : 0; }

const char *fe_dtype_name(fe_dtype dt) {
    return (unsigned)dt < FE_DTYPE_COUNT ? k_dtypes[dt].name : "?";
}

bool fe_dtype_is_float(fe_dtype dt) {
    return dt == FE_F32 || dt == FE_F64 || dt == FE_F16 || dt == FE_BF16;
}

bool fe_dtype_parse(const char *name, fe_dtype *out) {
    static const struct {
        const char *alias;
        fe_dtype dt;
    } aliases[] = {
        {"float32", FE_F32}, {"float", FE_F32},    {"float64", FE_F64}, {"double", FE_F64},
        {"float16", FE_F16}, {"half", FE_F16},     {"fp16", FE_F16},    {"bfloat16", FE_BF16},
        {"int32", FE_I32},   {"int64", FE_I64},    {"uint8", FE_U8},    {"int8", FE_I8},
        {"fp32", FE_F32},    {"F32", FE_F32},
    };
    if (!name) return false;
    for (int i = 0; i < FE_DTYPE_COUNT; i++)
        if (!strcasecmp(name, k_dtypes[i].name)) return *out = (fe_dtype)i, true;
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
        if (!strcasecmp(name, aliases[i].alias)) return *out = aliases[i].dt, true;
    return false;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t fe__f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                          /* RNE */
    return (uint16_t)(u >> 16);
}

float fe__bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t fe__f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);   /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* overflow to inf (RNE) */
    if (a < 0x38800000u) {                                     /* subnormal or zero */
        /* add a magic number so the FPU rounds to the f16 subnormal grid */
        float r = bits_f32(a) + 0.5f;
        return (uint16_t)(sign | (f32_bits(r) - f32_bits(0.5f)));
    }
    uint32_t mant_odd = (a >> 13) & 1u;
    a += 0xc8000fffu + mant_odd; /* rebias exponent (-112 << 23) and round */
    return (uint16_t)(sign | (a >> 13));
}

float fe__f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0) { /* zero / subnormal */
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

double fe__load(const void *p, fe_dtype dt, int64_t i) {
    switch (dt) {
    case FE_F32: return ((const float *)p)[i];
    case FE_F64: return ((const double *)p)[i];
    case FE_F16: return fe__f16_to_f32(((const uint16_t *)p)[i]);
    case FE_BF16: return fe__bf16_to_f32(((const uint16_t *)p)[i]);
    case FE_I32: return ((const int32_t *)p)[i];
    case FE_I64: return (double)((const int64_t *)p)[i];
    case FE_U8: return ((const uint8_t *)p)[i];
    case FE_I8: return ((const int8_t *)p)[i];
    default: return 0;
    }
}

/* Saturating float -> integer conversion (NaN -> 0) so that no cast is undefined. */
static int64_t to_int(double v, double lo, double hi) {
    if (v != v) return 0;
    if (v < lo) return (int64_t)lo;
    if (v > hi) return (int64_t)hi;
    return (int64_t)v;
}

void fe__store(void *p, fe_dtype dt, int64_t i, double v) {
    switch (dt) {
    case FE_F32: ((float *)p)[i] = (float)v; break;
    case FE_F64: ((double *)p)[i] = v; break;
    case FE_F16: ((uint16_t *)p)[i] = fe__f32_to_f16((float)v); break;
    case FE_BF16: ((uint16_t *)p)[i] = fe__f32_to_bf16((float)v); break;
    case FE_I32: ((int32_t *)p)[i] = (int32_t)to_int(v, -2147483648.0, 2147483647.0); break;
    case FE_I64:
        ((int64_t *)p)[i] = to_int(v, -9223372036854775808.0, 9223372036854774784.0);
        break;
    case FE_U8: ((uint8_t *)p)[i] = (uint8_t)to_int(v, 0, 255); break;
    case FE_I8: ((int8_t *)p)[i] = (int8_t)to_int(v, -128, 127); break;
    default: break;
    }
}
