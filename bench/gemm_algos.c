/* bench/gemm_algos: for bf16 products Y = X W^T (row-major X (M, K), W (N, K), f32
 * accumulation), time every algorithm cuBLASLt's heuristic offers, in the heuristic's
 * order, beside cublasGemmEx on the same operands. A diagnostic for the GEMM shapes
 * where ferric (which takes the heuristic's first answer) trails torch.matmul: it shows
 * whether a better algorithm is on offer and where the heuristic ranks it.
 *
 *   cc -O2 bench/gemm_algos.c -I/usr/local/cuda/include -L/usr/local/cuda/lib64 \
 *      -lcublasLt -lcublas -lcudart -o gemm_algos
 *   ./gemm_algos 16384,5632,2048 16384,2048,5632 ...      (M,K,N each)
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CK(x)                                                                                      \
    do {                                                                                           \
        int e_ = (int)(x);                                                                         \
        if (e_) {                                                                                  \
            fprintf(stderr, "%s:%d: %s failed (%d)\n", __FILE__, __LINE__, #x, e_);                \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

enum { MAXALG = 24, REPS = 5, ITERS = 20 };

static float g_time_ms(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return ms;
}

static int cmp_f(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* median over REPS of the mean time of ITERS back-to-back calls of run(ctx) */
typedef int (*run_fn)(void *ctx);
static float time_it(run_fn run, void *ctx, cudaStream_t s) {
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    if (run(ctx)) return -1.f;
    /* calls per run: about 50 ms of work, so that the clocks settle under the load */
    cudaEventRecord(e0, s);
    for (int i = 0; i < 3; i++) run(ctx);
    cudaEventRecord(e1, s);
    cudaEventSynchronize(e1);
    int iters = (int)(50.f / (g_time_ms(e0, e1) / 3 + 1e-3f));
    iters = iters < ITERS ? ITERS : iters > 2000 ? 2000 : iters;
    float t[REPS];
    for (int r = 0; r < REPS; r++) {
        cudaEventRecord(e0, s);
        for (int i = 0; i < iters; i++) run(ctx);
        cudaEventRecord(e1, s);
        cudaEventSynchronize(e1);
        t[r] = g_time_ms(e0, e1) / iters;
    }
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    qsort(t, REPS, sizeof t[0], cmp_f);
    return t[REPS / 2];
}

typedef struct {
    cublasLtHandle_t lt;
    cublasHandle_t blas;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    const cublasLtMatmulAlgo_t *algo;
    void *A, *B, *D, *ws;
    size_t wsz;
    int m, n, k;
    cudaStream_t s;
} ctx_t;

static int run_lt(void *p) {
    ctx_t *c = p;
    float one = 1.f, zero = 0.f;
    return cublasLtMatmul(c->lt, c->op, &one, c->A, c->la, c->B, c->lb, &zero, c->D, c->lc, c->D,
                          c->lc, c->algo, c->ws, c->wsz, c->s) != CUBLAS_STATUS_SUCCESS;
}

static int run_gemmex(void *p) {
    ctx_t *c = p;
    float one = 1.f, zero = 0.f;
    return cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, c->m, c->n, c->k, &one, c->A,
                        CUDA_R_16BF, c->k, c->B, CUDA_R_16BF, c->k, &zero, c->D, CUDA_R_16BF, c->m,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS;
}

static int cfg(const cublasLtMatmulAlgo_t *a, cublasLtMatmulAlgoConfigAttributes_t at) {
    uint32_t v = 0;
    size_t got = 0;
    /* the attributes are uint32 or uint16; a uint32 read of a uint16 one fills the low half */
    if (cublasLtMatmulAlgoConfigGetAttribute(a, at, &v, sizeof v, &got)) return -1;
    return got == 2 ? (int)(v & 0xffff) : (int)v;
}

/* n bf16 values of roughly normal noise with standard deviation sd into device memory:
 * random operands, because constant ones draw less power and run at higher clocks */
static void fill_random(void *dev, size_t n, float sd, uint64_t seed) {
    uint16_t *h = malloc(n * 2);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        float u = 0;
        for (int j = 0; j < 4; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            u += (float)(s >> 40) / (float)(1 << 24);
        }
        float f = (u - 2.0f) * 1.7320508f * sd; /* four uniforms: variance 1/3 */
        uint32_t b;
        memcpy(&b, &f, 4);
        h[i] = (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16); /* round to nearest even */
    }
    CK(cudaMemcpy(dev, h, n * 2, cudaMemcpyHostToDevice));
    free(h);
}

int main(int argc, char **argv) {
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("gemm_algos on %s\n", prop.name);
    ctx_t c = {0};
    CK(cublasLtCreate(&c.lt));
    CK(cublasCreate(&c.blas));
    CK(cudaStreamCreate(&c.s));
    CK(cublasSetStream(c.blas, c.s));
    c.wsz = (size_t)32 << 20;
    CK(cudaMalloc(&c.ws, c.wsz));
    CK(cublasSetWorkspace(c.blas, c.ws, c.wsz));
    for (int a = 1; a < argc; a++) {
        int M, K, N;
        if (sscanf(argv[a], "%d,%d,%d", &M, &K, &N) != 3) {
            fprintf(stderr, "bad shape %s (want M,K,N)\n", argv[a]);
            return 2;
        }
        /* column-major: Y^T (N, M) = W (stored (K, N), transposed) * X (stored (K, M)) */
        c.m = N, c.n = M, c.k = K;
        CK(cudaMalloc(&c.A, (size_t)N * K * 2));
        CK(cudaMalloc(&c.B, (size_t)M * K * 2));
        CK(cudaMalloc(&c.D, (size_t)M * N * 2));
        fill_random(c.A, (size_t)N * K, 0.02f, 1); /* as bench/kernels: W ~ 0.02 N(0, 1) */
        fill_random(c.B, (size_t)M * K, 1.0f, 2);
        CK(cublasLtMatmulDescCreate(&c.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
        CK(cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
        CK(cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof n));
        CK(cublasLtMatrixLayoutCreate(&c.la, CUDA_R_16BF, K, N, K));
        CK(cublasLtMatrixLayoutCreate(&c.lb, CUDA_R_16BF, K, M, K));
        CK(cublasLtMatrixLayoutCreate(&c.lc, CUDA_R_16BF, N, M, N));
        cublasLtMatmulPreference_t pref;
        CK(cublasLtMatmulPreferenceCreate(&pref));
        uint64_t ws = c.wsz;
        CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &ws, sizeof ws));
        cublasLtMatmulHeuristicResult_t res[MAXALG];
        int got = 0;
        CK(cublasLtMatmulAlgoGetHeuristic(c.lt, c.op, c.la, c.lb, c.lc, c.lc, pref, MAXALG, res,
                                          &got));
        double flop = 2.0 * M * N * K;
        printf("\nM=%d K=%d N=%d (Y = X W^T, bf16): %d algorithms offered\n", M, K, N, got);
        printf("%4s %6s %5s %6s %6s %7s %7s %6s %8s %9s %9s\n", "rank", "algo", "tile", "stages",
               "splitk", "swizzle", "cluster", "custom", "waves", "ms", "TFLOP/s");
        for (int i = 0; i < got; i++) {
            c.algo = &res[i].algo;
            float ms = time_it(run_lt, &c, c.s);
            printf("%4d %6d %5d %6d %6d %7d %7d %6d %8.3f %9.4f %9.1f\n", i,
                   cfg(&res[i].algo, CUBLASLT_ALGO_CONFIG_ID),
                   cfg(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
                   cfg(&res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID),
                   cfg(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                   cfg(&res[i].algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
                   cfg(&res[i].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID),
                   cfg(&res[i].algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION), res[i].wavesCount, ms,
                   ms > 0 ? flop / (ms * 1e-3) / 1e12 : 0.0);
        }
        float ms = time_it(run_gemmex, &c, c.s);
        printf("cublasGemmEx (CUBLAS_GEMM_DEFAULT)                          %9.4f %9.1f\n", ms,
               ms > 0 ? flop / (ms * 1e-3) / 1e12 : 0.0);
        fflush(stdout);
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(c.la), cublasLtMatrixLayoutDestroy(c.lb);
        cublasLtMatrixLayoutDestroy(c.lc), cublasLtMatmulDescDestroy(c.op);
        cudaFree(c.A), cudaFree(c.B), cudaFree(c.D);
    }
    return 0;
}
