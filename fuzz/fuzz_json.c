/* libFuzzer target: JSON loading -- a Llama config.json (parse, write, parse again must
 * give the same config) and a model.safetensors.index.json weight map. */
#include "ferric/ferric.h"
#include "ferric/io.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int same(const fe_hf_config *a, const fe_hf_config *b) {
    int eq = a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
             a->intermediate_size == b->intermediate_size &&
             a->num_hidden_layers == b->num_hidden_layers &&
             a->num_attention_heads == b->num_attention_heads &&
             a->num_key_value_heads == b->num_key_value_heads && a->head_dim == b->head_dim &&
             a->max_position_embeddings == b->max_position_embeddings &&
             a->rms_norm_eps == b->rms_norm_eps && a->rope_theta == b->rope_theta &&
             !strcmp(a->rope_scaling_type, b->rope_scaling_type) &&
             a->tie_word_embeddings == b->tie_word_embeddings &&
             a->bos_token_id == b->bos_token_id && a->eos_token_id == b->eos_token_id &&
             a->n_eos_token_ids == b->n_eos_token_ids;
    for (int i = 0; eq && i < a->n_eos_token_ids; i++)
        eq = a->eos_token_ids[i] == b->eos_token_ids[i];
    return eq;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    fe_hf_config c, d;
    if (fe_hf_config_parse(text, size, &c) == FE_OK) {
        char *s = fe_hf_config_to_json(&c);
        if (!s) __builtin_trap(); /* a parsed config always validates */
        if (fe_hf_config_parse(s, strlen(s), &d) != FE_OK) __builtin_trap();
        if (!same(&c, &d)) __builtin_trap();
        (void)fe_hf_config_num_params(&c);
        free(s);
    } else if (fe_last_error()[0] == 0) {
        __builtin_trap();
    }
    fe_clear_error();
    char **names, **files;
    int64_t n;
    if (fe_weights_parse_index(text, size, &names, &files, &n) == FE_OK) {
        for (int64_t i = 0; i < n; i++) {
            if (!names[i] || !files[i] || files[i][0] == '/') __builtin_trap();
            if (i && strcmp(names[i - 1], names[i]) >= 0) __builtin_trap(); /* sorted, unique */
        }
        fe_weights_free_map(names, files, n);
    } else if (fe_last_error()[0] == 0) {
        __builtin_trap();
    }
    fe_clear_error();
    return 0;
}
