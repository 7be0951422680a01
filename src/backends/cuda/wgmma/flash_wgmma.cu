/* Launchers of the experimental wgmma flash kernels (wg_flash_fwd.cuh, wg_flash_bwd.cuh) on
 * fe_flash_args, for fe_flash_attention_forward / _backward (FE_FLASH_WGMMA=1) and for
 * tests/wgmma/wg_flash_check.cu. Compiled for sm_90a only (CMakeLists.txt, flash_check.sh). */
#include "backends/cuda/flash_attention.h"

#include "wg_flash_bwd.cuh"

static fe_status wg_err(cudaError_t e, const char *what) {
    return e == cudaSuccess ? FE_OK
                            : fe_set_error(FE_ERR_DEVICE, "wgmma flash attention: %s: %s", what,
                                           cudaGetErrorString(e));
}
static void wg_strides(long long (&d)[3], const fe_flash_strides &s) { d[0] = s.b, d[1] = s.h, d[2] = s.r; }

/* kernel k's dynamic shared memory opted in once a process (a kernel per template instance) */
template <typename K> static fe_status wg_optin(K *k, int bytes, bool *done) {
    if (*done) return FE_OK;
    fe_status st = wg_err(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
                          "cudaFuncSetAttribute");
    if (!st) *done = true;
    return st;
}

template <bool BF> static fe_status wg_forward(const wf_params &p, int variant, cudaStream_t s) {
    static bool optin[2];
    const unsigned blocks = (unsigned)(p.B * p.Hq * ((p.T + WF_BR - 1) / WF_BR));
    fe_status st;
    if (variant == 0) {
        if ((st = wg_optin(wf_fwd_pipe_kernel<BF>, WF_SMEM_PIPE, &optin[0]))) return st;
        wf_fwd_pipe_kernel<BF><<<blocks, WF_NT, WF_SMEM_PIPE, s>>>(p);
    } else {
        if ((st = wg_optin(wf_fwd_kernel<BF>, WF_SMEM, &optin[1]))) return st;
        wf_fwd_kernel<BF><<<blocks, WF_NT, WF_SMEM, s>>>(p);
    }
    return wg_err(cudaGetLastError(), "forward kernel launch");
}

extern "C" fe_status fe_flash_wgmma_forward(const fe_flash_args *a, int variant, void *stream) {
    if (a->D != 128)
        return fe_set_error(FE_ERR_SHAPE, "wgmma flash attention: head dim %lld, not 128",
                            (long long)a->D);
    if (a->B == 0 || a->Hq == 0 || a->T == 0) return FE_OK;
    wf_params p;
    p.q = (const uint16_t *)a->q, p.k = (const uint16_t *)a->k, p.v = (const uint16_t *)a->v;
    p.out = (uint16_t *)a->out, p.lse = a->lse;
    p.B = (int)a->B, p.Hq = (int)a->Hq, p.Hkv = (int)a->Hkv, p.T = (int)a->T, p.S = (int)a->S;
    wg_strides(p.sq, a->sq), wg_strides(p.sk, a->sk), wg_strides(p.sv, a->sv), wg_strides(p.so, a->sout);
    p.sl2 = (float)(a->scale * 1.4426950408889634), p.causal = a->causal;
    cudaStream_t s = (cudaStream_t)stream;
    return a->dtype == FE_BF16 ? wg_forward<true>(p, variant, s) : wg_forward<false>(p, variant, s);
}

/* f32 scratch: dQ (B, Hq, T, D), dK and dV (B, Hkv, S, D), the row statistics (B, Hq, 2, TP) */
extern "C" size_t fe_flash_wgmma_scratch_size(const fe_flash_args *a) {
    const size_t TP = (size_t)((a->T + WB_BR - 1) / WB_BR * WB_BR);
    return ((size_t)a->B * a->Hq * a->T * 128 + 2 * (size_t)a->B * a->Hkv * a->S * 128 +
            (size_t)a->B * a->Hq * 2 * TP) * sizeof(float);
}

template <bool BF> static fe_status wg_backward(const wb_params &w, cudaStream_t s) {
    const size_t nq = (size_t)w.B * w.Hq * w.T * 128, nk = (size_t)w.B * w.Hkv * w.S * 128;
    /* dQ (and dK, dV with grouped heads, added to by several blocks) start at zero */
    fe_status st = wg_err(cudaMemsetAsync(w.fdq, 0, (nq + (w.Hq != w.Hkv ? 2 * nk : 0)) * 4, s),
                          "cudaMemsetAsync of the scratch");
    if (st) return st;
    wb_pre<BF><<<(unsigned)(((long long)w.B * w.Hq * w.TP + 7) / 8), 256, 0, s>>>(w);
    static bool optin;
    if ((st = wg_optin(wb_bwd_kernel<BF>, WB_SMEM, &optin))) return st;
    wb_bwd_kernel<BF><<<(unsigned)(w.B * w.Hq * ((w.S + WB_BC - 1) / WB_BC)), WF_NT, WB_SMEM, s>>>(w);
    wb_convert<BF><<<(unsigned)((nq / 2 + nk + 255) / 256), 256, 0, s>>>(w);
    return wg_err(cudaGetLastError(), "backward kernel launch");
}

extern "C" fe_status fe_flash_wgmma_backward(const fe_flash_args *a, void *scratch, void *stream) {
    if (a->D != 128 || a->T <= 0 || a->S <= 0)
        return fe_set_error(FE_ERR_SHAPE, "wgmma flash attention backward: head dim %lld, %lld "
                            "queries, %lld keys (takes D 128 and at least one of each)",
                            (long long)a->D, (long long)a->T, (long long)a->S);
    if (a->B == 0 || a->Hq == 0 || a->Hkv == 0) return FE_OK;
    wb_params w;
    w.q = (const uint16_t *)a->q, w.k = (const uint16_t *)a->k, w.v = (const uint16_t *)a->v;
    w.o = (const uint16_t *)a->out, w.dout = (const uint16_t *)a->gout, w.lse = a->lse;
    w.dq = (uint16_t *)a->gq, w.dk = (uint16_t *)a->gk, w.dv = (uint16_t *)a->gv;
    w.B = (int)a->B, w.Hq = (int)a->Hq, w.Hkv = (int)a->Hkv, w.T = (int)a->T, w.S = (int)a->S;
    w.TP = (w.T + WB_BR - 1) / WB_BR * WB_BR;
    wg_strides(w.sq, a->sq), wg_strides(w.sk, a->sk), wg_strides(w.sv, a->sv);
    wg_strides(w.so, a->sout), wg_strides(w.sdo, a->sgout), wg_strides(w.sdq, a->sgq);
    wg_strides(w.sdk, a->sgk), wg_strides(w.sdv, a->sgv);
    w.scale = (float)a->scale, w.sl2 = (float)(a->scale * 1.4426950408889634), w.causal = a->causal;
    const size_t nq = (size_t)w.B * w.Hq * w.T * 128, nk = (size_t)w.B * w.Hkv * w.S * 128;
    w.fdq = (float *)scratch, w.fdk = w.fdq + nq, w.fdv = w.fdk + nk, w.stat = w.fdv + nk;
    cudaStream_t s = (cudaStream_t)stream;
    return a->dtype == FE_BF16 ? wg_backward<true>(w, s) : wg_backward<false>(w, s);
}
