/* The byte-level tokenizer: one token per byte, token = byte value (vocab 256). */
#include "ferric/data.h"

int64_t fe_bytes_encode(const void *text, size_t n, int32_t *out) {
    const unsigned char *s = text;
    for (size_t i = 0; i < n; i++)
        out[i] = s[i];
    return (int64_t)n;
}

fe_status fe_bytes_decode(const int32_t *tokens, int64_t n, char *out) {
    if (n < 0 || (n > 0 && (!tokens || !out)))
        return fe_set_error(FE_ERR_ARG, "fe_bytes_decode: bad arguments");
    for (int64_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= FE_BYTES_VOCAB)
            return fe_set_error(FE_ERR_RANGE,
                                "byte tokenizer: token %d at position %lld is not a byte",
                                tokens[i], (long long)i);
        out[i] = (char)(unsigned char)tokens[i];
    }
    return FE_OK;
}
