/* RoPE inverse frequencies, plain and with Llama 3 scaling, computed in float32
 * step by step in the order transformers uses, so the tensors agree bit for bit. */
#include "core/internal.h"
#include "ferric/nn.h"

#include <inttypes.h>
#include <math.h>

fe_tensor *fe_nn_rope_inv_freq(int64_t head_dim, double theta, const fe_rope_scaling *sc,
                               fe_device dev) {
    if (head_dim < 2 || head_dim % 2 || !(theta > 0)) {
        fe_set_error(FE_ERR_ARG, "rope: head_dim %" PRId64 " must be even and >= 2, theta %g > 0",
                     head_dim, theta);
        return NULL;
    }
    bool llama3 = sc && sc->llama3;
    if (llama3 && (!(sc->factor > 0) || !(sc->low_freq_factor > 0) ||
                   !(sc->high_freq_factor > sc->low_freq_factor) ||
                   sc->original_max_position_embeddings <= 0)) {
        fe_set_error(FE_ERR_ARG,
                     "rope: llama3 scaling needs factor > 0, 0 < low_freq_factor < "
                     "high_freq_factor and original_max_position_embeddings > 0 (got %g, %g, "
                     "%g, %" PRId64 ")",
                     sc->factor, sc->low_freq_factor, sc->high_freq_factor,
                     sc->original_max_position_embeddings);
        return NULL;
    }
    int64_t half = head_dim / 2;
    float *f = malloc((size_t)half * sizeof *f);
    if (!f) {
        fe_set_error(FE_ERR_OOM, "rope: out of host memory");
        return NULL;
    }
    /* inv_freq = 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all in f32 */
    for (int64_t i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)head_dim;
        float p = powf((float)theta, e);
        f[i] = 1.0f / p;
    }
    if (llama3) {
        /* Python-side scalars are doubles that torch casts to f32 when they meet a tensor */
        double old_len = (double)sc->original_max_position_embeddings;
        float factor = (float)sc->factor, low = (float)sc->low_freq_factor;
        float low_wavelen = (float)(old_len / sc->low_freq_factor);
        float high_wavelen = (float)(old_len / sc->high_freq_factor);
        float span = (float)(sc->high_freq_factor - sc->low_freq_factor);
        for (int64_t i = 0; i < half; i++) {
            float inv = f[i];
            float wavelen = (1.0f / inv) * (float)(2.0 * M_PI); /* 2*pi / inv_freq */
            float scaled = wavelen > low_wavelen ? inv / factor : inv;
            float smooth = ((1.0f / wavelen) * (float)old_len - low) / span;
            float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
            bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
            f[i] = medium ? smoothed : scaled;
        }
    }
    fe_tensor *t = fe_from_data(f, 1, &half, FE_F32, dev);
    free(f);
    return t;
}
