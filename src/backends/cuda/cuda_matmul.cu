/* CUDA matrix products: cuBLASLt for f32 (TF32 tensor cores only with FE_TF32=1), f16
 * and bf16 (f32 accumulation), cuBLAS for f64. Row-major operands map onto cuBLAS's
 * column-major convention as C^T = B^T A^T; either operand may be a transposed view.
 * Adding a tensor c is cuBLAS's beta = 1 with C = c (C == D when c is the output): the
 * epilogue adds it to the f32 (f64) product before the one rounding to the output's
 * dtype, which is f32 for an f32 accumulator of f16/bf16 operands, else the operands'.
 * Batch dims that collapse to one stride per operand run as one strided-batched call,
 * the rest loop on the host. Chosen algorithms are cached per shape. */
#include "backends/cuda/cuda_internal.cuh"

#include <inttypes.h>
#include <pthread.h>

/* A matrix operand: whether it is stored transposed (column-major) and its leading dim. */
typedef struct mat {
    bool trans;
    int64_t ld;
} mat;

/* Describe the last two dims (rows, cols) of t; false when neither has unit stride. */
static bool describe(const fe_tensor *t, mat *m) {
    int n = t->ndim;
    int64_t rows = t->shape[n - 2], cols = t->shape[n - 1];
    int64_t sr = t->stride[n - 2], sc = t->stride[n - 1];
    if ((sc == 1 || cols == 1) && (sr >= cols || rows == 1)) {
        m->trans = false;
        m->ld = rows == 1 ? (cols > 0 ? cols : 1) : sr;
        return true;
    }
    if ((sr == 1 || rows == 1) && (sc >= rows || cols == 1)) {
        m->trans = true;
        m->ld = cols == 1 ? (rows > 0 ? rows : 1) : sc;
        return true;
    }
    return false;
}

/* ---- the cuBLASLt algorithm cache ----------------------------------------------------------- */

typedef struct gemm_key {
    int dtype, cdtype, acc, tf32, ta, tb, epi;
    int64_t m, n, k, lda, ldb, ldc, batch, sa, sb, sc;
    int al_a, al_b, al_c, dev;
} gemm_key;

#define CU_ALGO_CACHE 256
static struct {
    gemm_key key;
    cublasLtMatmulAlgo_t algo;
    bool used;
} g_algos[CU_ALGO_CACHE];
static int g_algo_next = 0;
static pthread_mutex_t g_algo_lock = PTHREAD_MUTEX_INITIALIZER;

static bool algo_find(const gemm_key *k, cublasLtMatmulAlgo_t *algo) {
    bool found = false;
    pthread_mutex_lock(&g_algo_lock);
    for (int i = 0; i < CU_ALGO_CACHE && !found; i++)
        if (g_algos[i].used && !memcmp(&g_algos[i].key, k, sizeof *k)) {
            *algo = g_algos[i].algo;
            found = true;
        }
    pthread_mutex_unlock(&g_algo_lock);
    return found;
}

static void algo_put(const gemm_key *k, const cublasLtMatmulAlgo_t *algo) {
    pthread_mutex_lock(&g_algo_lock);
    int i = g_algo_next;
    g_algo_next = (g_algo_next + 1) % CU_ALGO_CACHE;
    g_algos[i].key = *k;
    g_algos[i].algo = *algo;
    g_algos[i].used = true;
    pthread_mutex_unlock(&g_algo_lock);
}

/* Largest power of two (at most 256) dividing the byte address of every batch's matrix. */
static int alignment(const void *p, int64_t batch_stride_bytes, int64_t batch) {
    uint64_t v = (uint64_t)(uintptr_t)p;
    if (batch > 1) v |= (uint64_t)batch_stride_bytes;
    int a = 1;
    while (a < 256 && !(v & (uint64_t)a))
        a <<= 1;
    return a;
}

/* FE_LT_LOG=1: print each algorithm cuBLASLt's heuristic gives for a new shape (stderr), to
 * compare with what another library runs on the same product (see bench/gemm_algos.c). */
static void log_algo(const gemm_key *k, const cublasLtMatmulAlgo_t *a) {
    const char *e = getenv("FE_LT_LOG");
    if (!e || strcmp(e, "1")) return;
    enum { NA = 7 };
    static const cublasLtMatmulAlgoConfigAttributes_t at[NA] = {
        CUBLASLT_ALGO_CONFIG_ID,           CUBLASLT_ALGO_CONFIG_TILE_ID,
        CUBLASLT_ALGO_CONFIG_STAGES_ID,    CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
        CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
        CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION};
    int v[NA];
    for (int i = 0; i < NA; i++) {
        uint32_t x = 0;
        size_t got = 0;
        v[i] = cublasLtMatmulAlgoConfigGetAttribute(a, at[i], &x, sizeof x, &got) ? -1
               : got == 2                                                      ? (int)(x & 0xffff)
                                                                               : (int)x;
    }
    fprintf(stderr,
            "cuBLASLt m %" PRId64 " n %" PRId64 " k %" PRId64 " ta %d tb %d ld %" PRId64 "/%" PRId64
            "/%" PRId64 " batch %" PRId64 " align %d/%d/%d: algo %d tile %d stages %d splitk %d "
            "swizzle %d cluster %d custom %d\n",
            k->m, k->n, k->k, k->ta, k->tb, k->lda, k->ldb, k->ldc, k->batch, k->al_a, k->al_b,
            k->al_c, v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
}

static const char *lt_status(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUBLAS_STATUS_MAPPING_ERROR: return "mapping error";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "unknown status";
    }
}

/* One GEMM call in cuBLAS's column-major terms: D (m, n) = alpha * op(A) (m, k) op(B) (k, n)
 * + C, repeated `batch` times with element strides sa, sb, sc. C is NULL (nothing added),
 * D itself, or another matrix laid out as D. dtype is A's and B's, cdtype C's and D's. */
typedef struct gemm_call {
    int dtype, cdtype;
    bool ta, tb;
    int64_t m, n, k, lda, ldb, ldc, batch, sa, sb, sc;
    const void *A, *B, *C;
    void *D;
    double alpha;
    /* epilogue (cuBLASLt only; 0 for none): a bias of m elements added to every column,
     * then with GELU the value before it written to aux (leading dim ldc) */
    int epi;
    const void *bias;
    void *aux;
} gemm_call;

enum { EPI_NONE = 0, EPI_BIAS, EPI_GELU_AUX, EPI_GELU_AUX_BIAS };

static cublasLtEpilogue_t lt_epilogue(int epi) {
    switch (epi) {
    case EPI_BIAS: return CUBLASLT_EPILOGUE_BIAS;
    case EPI_GELU_AUX: return CUBLASLT_EPILOGUE_GELU_AUX;
    case EPI_GELU_AUX_BIAS: return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    default: return CUBLASLT_EPILOGUE_DEFAULT;
    }
}

static cudaDataType_t cuda_type(int dt) {
    return dt == FE_F32 ? CUDA_R_32F : dt == FE_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

#define LT_TRY(call, what)                                                                         \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS && !st)                                                    \
            st = fe_set_error(FE_ERR_DEVICE, "matmul (cuda): %s failed: %s", what, lt_status(s_)); \
    } while (0)

/* Sets *no_algo (and returns FE_OK) when cuBLASLt offers no algorithm for the call. */
static fe_status run_lt(cu_dev *d, const gemm_call *g, bool *no_algo) {
    *no_algo = false;
    cudaDataType_t ty = cuda_type(g->dtype), cty = cuda_type(g->cdtype);
    cublasComputeType_t ct =
        (g->dtype == FE_F32 && d->tf32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    size_t es = fe_dtype_size((fe_dtype)g->dtype), ces = fe_dtype_size((fe_dtype)g->cdtype);
    gemm_key key;
    memset(&key, 0, sizeof key);
    key.dtype = g->dtype, key.cdtype = g->cdtype, key.acc = g->C != NULL,
    key.tf32 = ct == CUBLAS_COMPUTE_32F_FAST_TF32, key.ta = g->ta, key.tb = g->tb, key.epi = g->epi;
    key.m = g->m, key.n = g->n, key.k = g->k, key.lda = g->lda, key.ldb = g->ldb, key.ldc = g->ldc;
    key.batch = g->batch, key.sa = g->sa, key.sb = g->sb, key.sc = g->sc, key.dev = d->index;
    key.al_a = alignment(g->A, g->sa * (int64_t)es, g->batch);
    key.al_b = alignment(g->B, g->sb * (int64_t)es, g->batch);
    key.al_c = alignment(g->D, g->sc * (int64_t)ces, g->batch);
    if (g->C) {
        int al = alignment(g->C, g->sc * (int64_t)ces, g->batch);
        key.al_c = al < key.al_c ? al : key.al_c;
    }

    fe_status st = FE_OK;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasOperation_t opa = g->ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                      opb = g->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescCreate(&op, ct, CUDA_R_32F), "cublasLtMatmulDescCreate");
    if (!st)
        LT_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa),
               "set TRANSA");
    if (!st)
        LT_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb),
               "set TRANSB");
    /* stored shapes: op(A) is (m, k), so A is (m, k) or (k, m) as stored */
    if (!st)
        LT_TRY(
            cublasLtMatrixLayoutCreate(&la, ty, g->ta ? g->k : g->m, g->ta ? g->m : g->k, g->lda),
            "cublasLtMatrixLayoutCreate (A)");
    if (!st)
        LT_TRY(
            cublasLtMatrixLayoutCreate(&lb, ty, g->tb ? g->n : g->k, g->tb ? g->k : g->n, g->ldb),
            "cublasLtMatrixLayoutCreate (B)");
    if (!st)
        LT_TRY(cublasLtMatrixLayoutCreate(&lc, cty, g->m, g->n, g->ldc),
               "cublasLtMatrixLayoutCreate (C)");
    if (!st && g->epi != EPI_NONE) {
        cublasLtEpilogue_t e = lt_epilogue(g->epi);
        LT_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e),
               "set EPILOGUE");
        /* the bias and the aux matrix take D's type (the library's default) */
        if (g->bias && !st)
            LT_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias,
                                                  sizeof g->bias),
                   "set BIAS_POINTER");
        if (g->aux) {
            int64_t ld = g->ldc;
            if (!st)
                LT_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                      &g->aux, sizeof g->aux),
                       "set EPILOGUE_AUX_POINTER");
            if (!st)
                LT_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld,
                                                      sizeof ld),
                       "set EPILOGUE_AUX_LD");
        }
    }
    if (!st && g->batch > 1) {
        int32_t bc = (int32_t)g->batch;
        cublasLtMatrixLayout_t ls[3] = {la, lb, lc};
        int64_t strides[3] = {g->sa, g->sb, g->sc};
        for (int i = 0; i < 3 && !st; i++) {
            LT_TRY(cublasLtMatrixLayoutSetAttribute(ls[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc,
                                                    sizeof bc),
                   "set BATCH_COUNT");
            if (!st)
                LT_TRY(cublasLtMatrixLayoutSetAttribute(ls[i],
                                                        CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                        &strides[i], sizeof strides[i]),
                       "set STRIDED_BATCH_OFFSET");
        }
    }
    cublasLtMatmulAlgo_t algo;
    if (!st && !algo_find(&key, &algo)) {
        LT_TRY(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
        uint64_t ws = d->workspace_size;
        uint32_t al[3] = {(uint32_t)key.al_a, (uint32_t)key.al_b, (uint32_t)key.al_c};
        if (!st)
            LT_TRY(cublasLtMatmulPreferenceSetAttribute(
                       pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
                   "set MAX_WORKSPACE_BYTES");
        if (!st)
            LT_TRY(cublasLtMatmulPreferenceSetAttribute(
                       pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], sizeof al[0]),
                   "set MIN_ALIGNMENT_A_BYTES");
        if (!st)
            LT_TRY(cublasLtMatmulPreferenceSetAttribute(
                       pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], sizeof al[1]),
                   "set MIN_ALIGNMENT_B_BYTES");
        if (!st)
            LT_TRY(cublasLtMatmulPreferenceSetAttribute(
                       pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], sizeof al[2]),
                   "set MIN_ALIGNMENT_C_BYTES");
        if (!st)
            LT_TRY(cublasLtMatmulPreferenceSetAttribute(
                       pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[2], sizeof al[2]),
                   "set MIN_ALIGNMENT_D_BYTES");
        cublasLtMatmulHeuristicResult_t res;
        int got = 0;
        if (!st) {
            cublasStatus_t hs =
                cublasLtMatmulAlgoGetHeuristic(d->lt, op, la, lb, lc, lc, pref, 1, &res, &got);
            if (hs != CUBLAS_STATUS_SUCCESS || got < 1) *no_algo = true; /* caller falls back */
        }
        if (!st && !*no_algo) {
            algo = res.algo;
            algo_put(&key, &algo);
            log_algo(&key, &algo);
        }
    }
    if (!st && !*no_algo) {
        /* beta = 1 adds C (which may be D itself); beta = 0 never reads it */
        float alpha = (float)g->alpha, beta = g->C ? 1.0f : 0.0f;
        LT_TRY(cublasLtMatmul(d->lt, op, &alpha, g->A, la, g->B, lb, &beta, g->C ? g->C : g->D,
                              lc, g->D, lc,
                              &algo, d->workspace, d->workspace_size, d->stream),
               "cublasLtMatmul");
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    if (!st) st = cu_launched("cublasLtMatmul");
    return st;
}

/* For the cuBLAS calls, whose C is also their output: a C apart from D is copied into D
 * first, and the call then adds to D in place. */
static fe_status c_into_d(cu_dev *d, const gemm_call *g) {
    if (!g->C || g->C == g->D) return FE_OK;
    size_t bytes = (size_t)(g->batch * g->m * g->n) * fe_dtype_size((fe_dtype)g->cdtype);
    return cu_check(cudaMemcpyAsync(g->D, g->C, bytes, cudaMemcpyDeviceToDevice, d->stream),
                    "matmul (cuda): cudaMemcpyAsync (C into D)");
}

static fe_status run_f64(cu_dev *d, const gemm_call *g) {
    double alpha = g->alpha, beta = g->C ? 1.0 : 0.0;
    fe_status st = c_into_d(d, g);
    if (st) return st;
    if (g->m > INT32_MAX || g->n > INT32_MAX || g->k > INT32_MAX || g->lda > INT32_MAX ||
        g->ldb > INT32_MAX || g->ldc > INT32_MAX || g->batch > INT32_MAX)
        return fe_set_error(FE_ERR_SHAPE, "matmul (cuda): f64 product too large for cuBLAS");
    LT_TRY(cublasDgemmStridedBatched(d->blas, g->ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                     g->tb ? CUBLAS_OP_T : CUBLAS_OP_N, (int)g->m, (int)g->n,
                                     (int)g->k, &alpha, (const double *)g->A, (int)g->lda, g->sa,
                                     (const double *)g->B, (int)g->ldb, g->sb, &beta,
                                     (double *)g->D, (int)g->ldc, g->sc, (int)g->batch),
           "cublasDgemmStridedBatched");
    if (!st) st = cu_launched("cublasDgemmStridedBatched");
    return st;
}

/* The same call through cublasGemmStridedBatchedEx: the fallback for shapes and
 * alignments that cuBLASLt's heuristic turns down. */
static fe_status run_ex(cu_dev *d, const gemm_call *g) {
    cudaDataType_t ty = cuda_type(g->dtype), cty = cuda_type(g->cdtype);
    cublasComputeType_t ct =
        (g->dtype == FE_F32 && d->tf32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    if (g->m > INT32_MAX || g->n > INT32_MAX || g->k > INT32_MAX || g->lda > INT32_MAX ||
        g->ldb > INT32_MAX || g->ldc > INT32_MAX || g->batch > INT32_MAX)
        return fe_set_error(FE_ERR_SHAPE, "matmul (cuda): product too large for cuBLAS");
    float alpha = (float)g->alpha, beta = g->C ? 1.0f : 0.0f;
    fe_status st = c_into_d(d, g);
    if (st) return st;
    LT_TRY(cublasGemmStridedBatchedEx(d->blas, g->ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                      g->tb ? CUBLAS_OP_T : CUBLAS_OP_N, (int)g->m, (int)g->n,
                                      (int)g->k, &alpha, g->A, ty, (int)g->lda, g->sa, g->B, ty,
                                      (int)g->ldb, g->sb, &beta, g->D, cty, (int)g->ldc, g->sc,
                                      (int)g->batch, ct, CUBLAS_GEMM_DEFAULT),
           "cublasGemmStridedBatchedEx");
    if (!st) st = cu_launched("cublasGemmStridedBatchedEx");
    return st;
}

/* A contiguous copy of t (same shape and dtype), outside any scope. */
static fe_tensor *packed(const fe_tensor *t) {
    fe_scope *s = fe__scope_suspend();
    fe_tensor *c = fe__alloc(t->ndim, t->shape, t->dtype, t->st->dev);
    if (c && fe_cuda_copy(c, t) != FE_OK) {
        fe_free(c);
        c = NULL;
    }
    fe__scope_resume(s);
    return c;
}

extern "C" fe_status fe_cuda_matmul(fe_tensor *out, const fe_tensor *a, const fe_tensor *b,
                                    double alpha, const fe_tensor *c) {
    cu_dev *d = cu_of(out);
    if (!d) return fe_last_status();
    int nd = out->ndim;
    if (nd < 2 || a->ndim != nd || b->ndim != nd)
        return fe_set_error(FE_ERR_SHAPE, "matmul (cuda): operands must share out's rank (>= 2)");
    /* out has the operands' dtype, or is an f32 accumulator of f16/bf16 products */
    bool half_to_f32 = out->dtype == FE_F32 && (a->dtype == FE_F16 || a->dtype == FE_BF16);
    if (a->dtype != b->dtype || (a->dtype != out->dtype && !half_to_f32) ||
        !fe_dtype_is_float(out->dtype))
        return fe_set_error(FE_ERR_DTYPE, "matmul (cuda): dtypes %s @ %s -> %s are not supported",
                            fe_dtype_name(a->dtype), fe_dtype_name(b->dtype),
                            fe_dtype_name(out->dtype));
    if (!fe_is_contiguous(out))
        return fe_set_error(FE_ERR_ARG, "matmul (cuda): the output must be contiguous");
    if (c && (c->dtype != out->dtype || !fe_is_contiguous(c) || !fe__same_shape(c, out)))
        return fe_set_error(FE_ERR_ARG,
                            "matmul (cuda): the tensor to add must be contiguous, of the "
                            "output's shape and dtype");
    int64_t M = out->shape[nd - 2], N = out->shape[nd - 1], K = a->shape[nd - 1];
    int64_t batch = fe__numel_of(nd - 2, out->shape);
    if (M == 0 || N == 0 || batch == 0) return FE_OK;
    if (K == 0) /* an empty product: out = c, or 0 */
        return c == out ? FE_OK : c ? fe_cuda_copy(out, c) : fe_cuda_fill(out, 0.0);

    /* operands whose matrices have no unit-stride dim are packed first */
    fe_tensor *pa = NULL, *pb = NULL;
    mat ma, mb;
    if (!describe(a, &ma)) {
        if (!(pa = packed(a))) return fe_last_status();
        a = pa;
        describe(a, &ma);
    }
    if (!describe(b, &mb)) {
        if (!(pb = packed(b))) {
            fe_free(pa);
            return fe_last_status();
        }
        b = pb;
        describe(b, &mb);
    }

    /* the longest run of inner batch dims with one stride per operand */
    int nbd = nd - 2, split = nbd; /* dims [split, nbd) form the strided batch */
    int64_t inner = 1, sa = 0, sb = 0, so = M * N;
    for (int j = nbd - 1; j >= 0; j--) {
        int64_t s = out->shape[j];
        if (s == 1) {
            split = j;
            continue;
        }
        if (inner == 1) {
            sa = a->stride[j], sb = b->stride[j];
        } else if (a->stride[j] != sa * inner || b->stride[j] != sb * inner) {
            break;
        }
        inner *= s;
        split = j;
    }
    int64_t outer = batch / inner;
    /* sa/sb are the strides of the innermost collapsed dim; the run's stride is that */
    size_t es = fe_dtype_size(a->dtype), oes = fe_dtype_size(out->dtype);
    fe_status st = FE_OK;
    for (int64_t ob = 0; ob < outer && !st; ob++) {
        int64_t oa = 0, obb = 0, r = ob;
        for (int j = split - 1; j >= 0; j--) {
            int64_t i = r % out->shape[j];
            r /= out->shape[j];
            oa += i * a->stride[j];
            obb += i * b->stride[j];
        }
        gemm_call g;
        g.dtype = a->dtype, g.cdtype = out->dtype;
        g.m = N, g.n = M, g.k = K;
        g.A = (const char *)fe__ptr(b) + obb * (int64_t)es; /* column-major: C^T = B^T A^T */
        g.ta = mb.trans, g.lda = mb.ld, g.sa = sb;
        g.B = (const char *)fe__ptr(a) + oa * (int64_t)es;
        g.tb = ma.trans, g.ldb = ma.ld, g.sb = sa;
        g.D = (char *)fe__ptr(out) + ob * inner * M * N * (int64_t)oes;
        g.C = c ? (const char *)fe__ptr(c) + ob * inner * M * N * (int64_t)oes : NULL;
        g.ldc = N, g.sc = so;
        g.batch = inner;
        g.alpha = alpha;
        g.epi = EPI_NONE, g.bias = NULL, g.aux = NULL;
        if (out->dtype == FE_F64) {
            st = run_f64(d, &g);
        } else {
            bool no_algo = false;
            st = run_lt(d, &g, &no_algo);
            if (!st && no_algo) st = run_ex(d, &g);
        }
    }
    fe_free(pa);
    fe_free(pb);
    return st;
}

extern "C" fe_status fe_cuda_linear_act(fe_tensor *out, fe_tensor *pre, const fe_tensor *x,
                                        const fe_tensor *w, const fe_tensor *bias, int act,
                                        bool *done) {
    *done = false;
    cu_dev *d = cu_of(out);
    if (!d) return fe_last_status();
    const int64_t K = w->shape[1], N = w->shape[0], R = K ? fe_numel(x) / K : 0;
    if (out->dtype == FE_F64 || (act == FE_ACT_GELU_TANH) != (pre != NULL) ||
        (act != FE_ACT_GELU_TANH && !bias))
        return fe_set_error(FE_ERR_ARG, "linear epilogue (cuda): unsupported combination");
    if (R == 0 || N == 0 || K == 0) return FE_OK; /* composed instead: nothing to gain */
    /* column-major: out^T (N, R) = w (N, K) x^T (K, R), the bias along out^T's rows */
    gemm_call g;
    memset(&g, 0, sizeof g);
    g.dtype = g.cdtype = x->dtype;
    g.m = N, g.n = R, g.k = K;
    g.A = fe__ptr(w), g.ta = true, g.lda = K;
    g.B = fe__ptr(x), g.tb = false, g.ldb = K;
    g.D = fe__ptr(out), g.ldc = N, g.sc = N * R, g.batch = 1, g.alpha = 1.0;
    g.bias = bias ? fe__ptr(bias) : NULL;
    g.aux = pre ? fe__ptr(pre) : NULL;
    g.epi = act == FE_ACT_GELU_TANH ? (bias ? EPI_GELU_AUX_BIAS : EPI_GELU_AUX) : EPI_BIAS;
    bool no_algo = false;
    fe_status st = run_lt(d, &g, &no_algo);
    *done = !st && !no_algo;
    return st;
}
