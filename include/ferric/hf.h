/* ferric hf: Llama models as Hugging Face folders (config.json + safetensors weights),
 * loaded into and saved from a fe_llama, so that checkpoints move both ways between
 * ferric and transformers' LlamaForCausalLM. */
#ifndef FERRIC_HF_H
#define FERRIC_HF_H

#include "ferric/core.h"
#include "ferric/io.h"
#include "ferric/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Pass as the dtype of fe_llama_load_hf to keep the dtype the weights are stored in. */
#define FE_DTYPE_STORED ((fe_dtype)-1)

/* The fe_llama_config a Hugging Face Llama config describes (max_seq from
 * max_position_embeddings, llama3 rope scaling, tied embeddings). FE_ERR_FORMAT naming the
 * feature for what ferric's Llama lacks (attention/MLP biases, linear or dynamic rope). */
fe_status fe_llama_config_from_hf(const fe_hf_config *hf, fe_llama_config *out);
/* The Hugging Face config of a fe_llama config with torch_dtype from dt (bos 1 and eos 2
 * when the vocabulary has room, else none). FE_ERR_ARG / FE_ERR_FORMAT on a bad config. */
fe_status fe_hf_config_from_llama(const fe_llama_config *c, fe_dtype dt, fe_hf_config *out);

/* Read the config.json of a folder (or a config.json path): the same as
 * fe_hf_config_load, which also reads transformers 5's "rope_parameters" object. */
fe_status fe_hf_folder_config(const char *path, fe_hf_config *out);

/* Load a Hugging Face Llama folder (config.json, read by fe_hf_folder_config, and model.safetensors
 * or a sharded index) onto dev, casting the weights to dt, or keeping their stored dtype (that of
 * model.embed_tokens.weight) with FE_DTYPE_STORED. NULL with FE_ERR_IO / FE_ERR_FORMAT
 * naming the file, the missing tensor or the tensor with the wrong shape and the shape
 * expected. The global random generator is left as it was. */
fe_llama *fe_llama_load_hf(const char *dir, fe_dtype dt, fe_device dev);
/* Write m as a folder transformers' LlamaForCausalLM.from_pretrained loads: dir (created
 * when missing) gets model.safetensors and config.json, each written atomically (weights
 * first); a stale model.safetensors.index.json there is removed. FE_ERR_IO on failure. */
fe_status fe_llama_save_hf(const fe_llama *m, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
