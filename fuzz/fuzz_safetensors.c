/* libFuzzer target: the safetensors header parser and tensor loading, from memory.
 * Any input must be refused cleanly or give tensors that lie inside the buffer. */
#include "ferric/ferric.h"
#include "ferric/io.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int init;
    if (!init) {
        fe_set_num_threads(1);
        init = 1;
    }
    fe_safetensors *f = fe_safetensors_open_memory(data, size);
    if (!f) {
        if (fe_last_error()[0] == 0) __builtin_trap(); /* a refusal must say why */
        fe_clear_error();
        return 0;
    }
    fe_scope *s = fe_scope_begin();
    for (int64_t i = 0; i < fe_safetensors_count(f); i++) {
        const char *name = fe_safetensors_name(f, i);
        fe_st_info info;
        if (fe_safetensors_info(f, name, &info) != FE_OK) __builtin_trap();
        size_t nb = 0;
        const uint8_t *p = fe_safetensors_raw(f, name, &nb);
        if (!p || nb != info.nbytes || p < data || p + nb > data + size) __builtin_trap();
        if (fe_safetensors_find(f, name) != i) __builtin_trap();
        if (info.has_fe_dtype && info.numel <= (1 << 16)) {
            fe_tensor *t = fe_safetensors_load_as(f, name, FE_F32, FE_DEVICE_CPU);
            if (!t || fe_numel(t) != info.numel) __builtin_trap();
            fe_free(t);
        }
    }
    for (int64_t i = 0; i < fe_safetensors_metadata_count(f); i++)
        if (!fe_safetensors_metadata(f, fe_safetensors_metadata_key(f, i))) __builtin_trap();
    fe_scope_end(s);
    fe_safetensors_close(f);
    if (fe_live_tensors() != 0) __builtin_trap();
    fe_clear_error();
    return 0;
}
