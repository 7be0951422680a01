/* ferric tokenizers: byte-level BPE (GPT-2, Llama 3) and SentencePiece-style BPE (Llama 2,
 * Mistral) loaded from Hugging Face tokenizer.json files or GPT-2's encoder.json + vocab.bpe,
 * producing the same ids as Hugging Face `tokenizers`.
 *
 * A tokenizer keeps a word cache, so one fe_tokenizer must not encode on two threads at once
 * (load one per thread, or lock around fe_tokenizer_encode). */
#ifndef FERRIC_TOKENIZER_H
#define FERRIC_TOKENIZER_H

#include "ferric/core.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fe_tokenizer fe_tokenizer;

/* Loads a tokenizer from `path`: a tokenizer.json, a folder holding one, or a folder holding
 * GPT-2's encoder.json + vocab.bpe. NULL + FE_ERR_IO / FE_ERR_FORMAT naming the problem. */
fe_tokenizer *fe_tokenizer_load(const char *path);
/* Builds a tokenizer from the text of a tokenizer.json (n bytes). NULL + FE_ERR_FORMAT. */
fe_tokenizer *fe_tokenizer_from_json(const char *json, size_t n);
/* Loads GPT-2's encoder.json (token -> id) and vocab.bpe (merges) with a byte-level
 * pre-tokenizer and decoder and "<|endoftext|>" as a special token. NULL + error. */
fe_tokenizer *fe_tokenizer_load_gpt2(const char *encoder_json, const char *vocab_bpe);
/* Frees the tokenizer (NULL is fine). */
void fe_tokenizer_free(fe_tokenizer *t);

/* Encodes n bytes of UTF-8 text (invalid bytes read as U+FFFD) into a malloc'd array of ids
 * (*ids, free() it; may be NULL when *n_ids is 0). add_special adds the post-processor's
 * tokens (bos for Llama/Mistral); added and special tokens in the text are always matched.
 * FE_ERR_ARG on NULL arguments, FE_ERR_OOM. */
fe_status fe_tokenizer_encode(fe_tokenizer *t, const char *text, size_t n, bool add_special,
                              int32_t **ids, size_t *n_ids);
/* Decodes ids into a malloc'd, NUL-terminated UTF-8 string (*text, free() it; *len its
 * length). skip_special drops special tokens; ids outside the vocabulary are dropped.
 * FE_ERR_ARG on NULL arguments, FE_ERR_OOM. */
fe_status fe_tokenizer_decode(const fe_tokenizer *t, const int32_t *ids, size_t n_ids,
                              bool skip_special, char **text, size_t *len);
/* One past the largest id (the size of an embedding table that covers every token). */
int32_t fe_tokenizer_vocab_size(const fe_tokenizer *t);
/* The id of a token string (vocabulary or added token), or -1 when it has none. */
int32_t fe_tokenizer_token_to_id(const fe_tokenizer *t, const char *token);
/* The token string of an id (NUL-terminated, owned by t), or NULL when out of range. */
const char *fe_tokenizer_id_to_token(const fe_tokenizer *t, int32_t id);
/* True when id is a special added token (bos, eos, <|eot_id|>, ...). */
bool fe_tokenizer_is_special(const fe_tokenizer *t, int32_t id);

#ifdef __cplusplus
}
#endif

#endif
