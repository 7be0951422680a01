/* The CUDA backend's kernel table, handed out only when a GPU is present. */
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/flash_attention.h"

static const fe_backend k_cuda_backend = {
    .name = "cuda",
    .alloc = fe_cuda_alloc,
    .free = fe_cuda_free,
    .memcpy = fe_cuda_memcpy,
    .sync = fe_cuda_sync,
    .mem_current = fe_cuda_mem_current,
    .mem_peak = fe_cuda_mem_peak,
    .mem_reset_peak = fe_cuda_mem_reset_peak,
    .copy = fe_cuda_copy,
    .fill = fe_cuda_fill,
    .arange = fe_cuda_arange,
    .rand = fe_cuda_rand,
    .unary = fe_cuda_unary,
    .binary = fe_cuda_binary,
    .where = fe_cuda_where,
    .reduce = fe_cuda_reduce,
    .matmul = fe_cuda_matmul,
    .linear_act = fe_cuda_linear_act,
    .softmax = fe_cuda_softmax,
    .softmax_backward = fe_cuda_softmax_backward,
    .rmsnorm = fe_cuda_rmsnorm,
    .rmsnorm_backward = fe_cuda_rmsnorm_backward,
    .layernorm = fe_cuda_layernorm,
    .layernorm_backward = fe_cuda_layernorm_backward,
    .rope = fe_cuda_rope,
    .embedding = fe_cuda_embedding,
    .embedding_backward = fe_cuda_embedding_backward,
    .cross_entropy = fe_cuda_cross_entropy,
    .cross_entropy_backward = fe_cuda_cross_entropy_backward,
    .silu_gate = fe_cuda_silu_gate,
    .silu_gate_backward = fe_cuda_silu_gate_backward,
    .attention = fe_cuda_attention,
    .attention_backward = fe_cuda_attention_backward,
    .adamw = fe_cuda_adamw,
    .grad_norm_sq = fe_cuda_grad_norm_sq,
    .scale_multi = fe_cuda_scale_multi,
};

/* 0: not probed yet, 1: a GPU is present, 2: none (probing twice is harmless) */
static int g_probe = 0;

const fe_backend *fe_cuda_backend_get(void) {
    int s = __atomic_load_n(&g_probe, __ATOMIC_ACQUIRE);
    if (s == 0) {
        s = fe_cuda_probe() ? 1 : 2;
        if (s == 1) /* flash attention runs on the backend's stream and allocator */
            fe_cuda_attention_set_hooks(&(fe_flash_hooks){fe_cuda_stream, fe_cuda_alloc, fe_cuda_free});
        __atomic_store_n(&g_probe, s, __ATOMIC_RELEASE);
    }
    return s == 1 ? &k_cuda_backend : NULL;
}
