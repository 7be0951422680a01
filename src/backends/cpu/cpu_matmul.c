/* CPU matrix products: a packaged CBLAS (OpenBLAS) for f32/f64 when built with one,
 * else our own cache-blocked loops; f16/bf16 go through f32. Adding to c is BLAS's
 * beta = 1 in that f32/f64 precision, over out once c's values are in it. */
#include "backends/cpu/cpu_internal.h"

#ifdef FE_HAVE_CBLAS
#include <cblas.h>
#endif

/* A matrix operand: element pointer plus whether it is stored transposed. */
typedef struct mat {
    const void *p;
    bool trans; /* stored as (cols, rows) */
    int64_t ld;
} mat;

/* Describe the last two dims (rows, cols) of t at element offset off; false when
 * neither dim is unit-stride (the caller then packs it). */
static bool describe(const fe_tensor *t, int64_t off, mat *m) {
    int n = t->ndim;
    int64_t rows = t->shape[n - 2], cols = t->shape[n - 1];
    int64_t sr = t->stride[n - 2], sc = t->stride[n - 1];
    m->p = cpu_at(fe__ptr(t), t->dtype, off);
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

/* Copy an operand's (rows, cols) block into a dense row-major buffer of dtype dt. */
static void pack(void *dst, fe_dtype dt, const fe_tensor *t, int64_t off) {
    int n = t->ndim;
    int64_t rows = t->shape[n - 2], cols = t->shape[n - 1];
    const char *base = fe__ptr(t);
    double buf[FE_CPU_CHUNK];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c0 = 0; c0 < cols; c0 += FE_CPU_CHUNK) {
            int64_t k = cols - c0 < FE_CPU_CHUNK ? cols - c0 : FE_CPU_CHUNK;
            cpu_load(buf, cpu_at(base, t->dtype, off + r * t->stride[n - 2] + c0 * t->stride[n - 1]),
                     t->dtype, t->stride[n - 1], k);
            cpu_store(cpu_at(dst, dt, r * cols + c0), dt, 1, buf, k);
        }
}

#ifndef FE_HAVE_CBLAS
/* Cache-blocked GEMM: threads take 64-row blocks of C; for each (k, n) block the B
 * panel is packed contiguously (which also removes B's transpose from the inner loop)
 * and streamed against the rows, so a panel is reused from cache across 64 rows. With
 * acc (beta = 1) a block's old rows are set aside and added once its product is whole,
 * so the sum rounds as the product and a separate add would. */
#define GEMM_MB 64
#define GEMM_KB 128
#define GEMM_NB 256
#define GEMM_LOOPS(T)                                                                          \
    static void gemm_##T(int64_t M, int64_t N, int64_t K, T alpha, const T *A, bool ta,        \
                         int64_t lda, const T *B, bool tb, int64_t ldb, T *C, bool acc) {      \
        int64_t nblk = (M + GEMM_MB - 1) / GEMM_MB;                                            \
        _Pragma("omp parallel if (M * N * K > 65536)") {                                       \
            /* the packed B panel, then (acc) the block's old rows of C */                     \
            T *bp = malloc(sizeof(T) * (GEMM_KB * GEMM_NB + (acc ? GEMM_MB * N : 0)));        \
            T *old = bp ? bp + GEMM_KB * GEMM_NB : NULL;                                       \
            _Pragma("omp for schedule(dynamic)") for (int64_t blk = 0; blk < nblk; blk++) {    \
                int64_t i0 = blk * GEMM_MB, i1 = i0 + GEMM_MB < M ? i0 + GEMM_MB : M;          \
                for (int64_t i = i0; i < i1; i++)                                              \
                    for (int64_t j = 0; j < N; j++) {                                          \
                        if (acc && old) old[(i - i0) * N + j] = C[i * N + j];                  \
                        C[i * N + j] = 0;                                                      \
                    }                                                                          \
                for (int64_t j0 = 0; j0 < N && bp; j0 += GEMM_NB) {                            \
                    int64_t nb = N - j0 < GEMM_NB ? N - j0 : GEMM_NB;                          \
                    for (int64_t k0 = 0; k0 < K; k0 += GEMM_KB) {                              \
                        int64_t kb = K - k0 < GEMM_KB ? K - k0 : GEMM_KB;                      \
                        for (int64_t k = 0; k < kb; k++)                                       \
                            for (int64_t j = 0; j < nb; j++)                                   \
                                bp[k * nb + j] = tb ? B[(j0 + j) * ldb + k0 + k]               \
                                                    : B[(k0 + k) * ldb + j0 + j];              \
                        for (int64_t i = i0; i < i1; i++) {                                    \
                            T *c = C + i * N + j0;                                             \
                            for (int64_t k = 0; k < kb; k++) {                                 \
                                T av = alpha * (ta ? A[(k0 + k) * lda + i] : A[i * lda + k0 + k]); \
                                const T *b = bp + k * nb;                                      \
                                for (int64_t j = 0; j < nb; j++) c[j] += av * b[j];            \
                            }                                                                  \
                        }                                                                      \
                    }                                                                          \
                }                                                                              \
                for (int64_t i = i0; i < i1 && acc && old; i++)                                \
                    for (int64_t j = 0; j < N; j++) C[i * N + j] += old[(i - i0) * N + j];     \
            }                                                                                  \
            free(bp);                                                                          \
        }                                                                                      \
    }
GEMM_LOOPS(float)
GEMM_LOOPS(double)
#endif

/* c (M, N, dense) = alpha a b, plus c's values when acc. */
static void gemm(fe_dtype dt, int64_t M, int64_t N, int64_t K, double alpha, mat a, mat b,
                 void *c, bool acc) {
#ifdef FE_HAVE_CBLAS
    if (dt == FE_F32) {
        cblas_sgemm(CblasRowMajor, a.trans ? CblasTrans : CblasNoTrans,
                    b.trans ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, (float)alpha,
                    a.p, (int)a.ld, b.p, (int)b.ld, acc ? 1.0f : 0.0f, c, (int)N);
    } else {
        cblas_dgemm(CblasRowMajor, a.trans ? CblasTrans : CblasNoTrans,
                    b.trans ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha, a.p,
                    (int)a.ld, b.p, (int)b.ld, acc ? 1.0 : 0.0, c, (int)N);
    }
#else
    if (dt == FE_F32)
        gemm_float(M, N, K, (float)alpha, a.p, a.trans, a.ld, b.p, b.trans, b.ld, c, acc);
    else
        gemm_double(M, N, K, alpha, a.p, a.trans, a.ld, b.p, b.trans, b.ld, c, acc);
#endif
}

/* Element offsets of batch bi into a and b. */
static void batch_offsets(const fe_tensor *out, const fe_tensor *a, const fe_tensor *b, int64_t bi,
                          int64_t *oa, int64_t *ob) {
    int64_t r = bi;
    *oa = *ob = 0;
    for (int d = out->ndim - 3; d >= 0; d--) {
        int64_t i = r % out->shape[d];
        r /= out->shape[d];
        *oa += i * a->stride[d];
        *ob += i * b->stride[d];
    }
}

/* Many small products with operands usable in place (attention's per-head products):
 * one product per thread at a time, each single-threaded inside BLAS, instead of one
 * after another with every small product split across the threads. false when the
 * case does not apply (nothing is computed then). */
static bool matmul_batched(fe_tensor *out, const fe_tensor *a, const fe_tensor *b, double alpha,
                           bool acc, int64_t M, int64_t N, int64_t K, int64_t batch) {
    fe_dtype ct = out->dtype;
    if ((ct != FE_F32 && ct != FE_F64) || a->dtype != ct || b->dtype != ct || K == 0 || batch < 4 ||
        M * N * K > (1 << 22))
        return false;
    for (int64_t bi = 0; bi < batch; bi++) {
        int64_t oa, ob;
        mat ma, mb;
        batch_offsets(out, a, b, bi, &oa, &ob);
        if (!describe(a, oa, &ma) || !describe(b, ob, &mb)) return false;
    }
#pragma omp parallel for schedule(static)
    for (int64_t bi = 0; bi < batch; bi++) {
        int64_t oa, ob;
        mat ma, mb;
        batch_offsets(out, a, b, bi, &oa, &ob);
        describe(a, oa, &ma), describe(b, ob, &mb);
        gemm(ct, M, N, K, alpha, ma, mb, cpu_at(fe__ptr(out), ct, bi * M * N), acc);
    }
    return true;
}

fe_status cpu_matmul(fe_tensor *out, const fe_tensor *a, const fe_tensor *b, double alpha,
                     const fe_tensor *c) {
    int nd = out->ndim;
    int64_t M = out->shape[nd - 2], N = out->shape[nd - 1], K = a->shape[nd - 1];
    int64_t batch = fe__numel_of(nd - 2, out->shape);
    if (M == 0 || N == 0) return FE_OK;
    /* out + product, with out starting as c */
    bool acc = c != NULL;
    if (c && c != out) {
        fe_status st = cpu_copy(out, c);
        if (st) return st;
    }
    if (matmul_batched(out, a, b, alpha, acc, M, N, K, batch)) return FE_OK;
    /* compute type: f64 stays f64; everything else runs in f32 */
    fe_dtype ct = out->dtype == FE_F64 ? FE_F64 : FE_F32;
    size_t es = fe_dtype_size(ct);
    bool direct_out = out->dtype == ct;
    void *pa = NULL, *pb = NULL, *pc = NULL;
    pa = malloc((size_t)(M * K > 0 ? M * K : 1) * es);
    pb = malloc((size_t)(K * N > 0 ? K * N : 1) * es);
    pc = direct_out ? NULL : malloc((size_t)(M * N) * es);
    if (!pa || !pb || (!direct_out && !pc)) {
        free(pa), free(pb), free(pc);
        return fe_set_error(FE_ERR_OOM, "matmul: out of host memory");
    }
    for (int64_t bi = 0; bi < batch; bi++) {
        int64_t oa = 0, ob = 0, r = bi;
        for (int d = nd - 3; d >= 0; d--) {
            int64_t i = r % out->shape[d];
            r /= out->shape[d];
            oa += i * a->stride[d];
            ob += i * b->stride[d];
        }
        mat ma, mb;
        if (a->dtype != ct || !describe(a, oa, &ma)) {
            pack(pa, ct, a, oa);
            ma = (mat){pa, false, K > 0 ? K : 1};
        }
        if (b->dtype != ct || !describe(b, ob, &mb)) {
            pack(pb, ct, b, ob);
            mb = (mat){pb, false, N};
        }
        void *cm = direct_out ? cpu_at(fe__ptr(out), ct, bi * M * N) : pc;
        double buf[FE_CPU_CHUNK];
        /* a 16-bit out accumulates in f32 and is rounded once, as on the GPU */
        for (int64_t i = 0; !direct_out && acc && i < M * N; i += FE_CPU_CHUNK) {
            int64_t k = M * N - i < FE_CPU_CHUNK ? M * N - i : FE_CPU_CHUNK;
            cpu_load(buf, cpu_at(fe__ptr(out), out->dtype, bi * M * N + i), out->dtype, 1, k);
            cpu_store(cpu_at(pc, ct, i), ct, 1, buf, k);
        }
        if (K > 0)
            gemm(ct, M, N, K, alpha, ma, mb, cm, acc);
        else if (!acc)
            memset(cm, 0, (size_t)(M * N) * es);
        for (int64_t i = 0; !direct_out && i < M * N; i += FE_CPU_CHUNK) {
            int64_t k = M * N - i < FE_CPU_CHUNK ? M * N - i : FE_CPU_CHUNK;
            cpu_load(buf, cpu_at(pc, ct, i), ct, 1, k);
            cpu_store(cpu_at(fe__ptr(out), out->dtype, bi * M * N + i), out->dtype, 1, buf, k);
        }
    }
    free(pa), free(pb), free(pc);
    return FE_OK;
}
