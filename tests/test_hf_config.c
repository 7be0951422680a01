/* Hugging Face Llama config.json: real-world samples, defaults, bad files, writer round trip. */
#include "ferric/io.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <unistd.h>

static fe_status parse(const char *json, fe_hf_config *c) {
    return fe_hf_config_parse(json, strlen(json), c);
}

static bool cfg_equal(const fe_hf_config *a, const fe_hf_config *b) {
    bool eq =
        a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
        a->intermediate_size == b->intermediate_size &&
        a->num_hidden_layers == b->num_hidden_layers &&
        a->num_attention_heads == b->num_attention_heads &&
        a->num_key_value_heads == b->num_key_value_heads && a->head_dim == b->head_dim &&
        a->max_position_embeddings == b->max_position_embeddings &&
        a->rms_norm_eps == b->rms_norm_eps && a->rope_theta == b->rope_theta &&
        !strcmp(a->rope_scaling_type, b->rope_scaling_type) && a->rope_factor == b->rope_factor &&
        a->rope_low_freq_factor == b->rope_low_freq_factor &&
        a->rope_high_freq_factor == b->rope_high_freq_factor &&
        a->rope_original_max_position_embeddings == b->rope_original_max_position_embeddings &&
        a->tie_word_embeddings == b->tie_word_embeddings &&
        a->attention_bias == b->attention_bias && a->mlp_bias == b->mlp_bias &&
        !strcmp(a->torch_dtype, b->torch_dtype) && a->bos_token_id == b->bos_token_id &&
        a->eos_token_id == b->eos_token_id && a->n_eos_token_ids == b->n_eos_token_ids;
    for (int i = 0; eq && i < a->n_eos_token_ids; i++)
        eq = a->eos_token_ids[i] == b->eos_token_ids[i];
    return eq;
}

/* Llama 3.2 1B's config.json (GQA, tied embeddings, llama3 rope scaling, eos list). */
static const char *k_llama32_1b = "{\n"
                                  "  \"architectures\": [\"LlamaForCausalLM\"],\n"
                                  "  \"attention_bias\": false,\n"
                                  "  \"attention_dropout\": 0.0,\n"
                                  "  \"bos_token_id\": 128000,\n"
                                  "  \"eos_token_id\": [128001, 128008, 128009],\n"
                                  "  \"head_dim\": 64,\n"
                                  "  \"hidden_act\": \"silu\",\n"
                                  "  \"hidden_size\": 2048,\n"
                                  "  \"initializer_range\": 0.02,\n"
                                  "  \"intermediate_size\": 8192,\n"
                                  "  \"max_position_embeddings\": 131072,\n"
                                  "  \"mlp_bias\": false,\n"
                                  "  \"model_type\": \"llama\",\n"
                                  "  \"num_attention_heads\": 32,\n"
                                  "  \"num_hidden_layers\": 16,\n"
                                  "  \"num_key_value_heads\": 8,\n"
                                  "  \"pretraining_tp\": 1,\n"
                                  "  \"rms_norm_eps\": 1e-05,\n"
                                  "  \"rope_scaling\": {\n"
                                  "    \"factor\": 32.0,\n"
                                  "    \"high_freq_factor\": 4.0,\n"
                                  "    \"low_freq_factor\": 1.0,\n"
                                  "    \"original_max_position_embeddings\": 8192,\n"
                                  "    \"rope_type\": \"llama3\"\n"
                                  "  },\n"
                                  "  \"rope_theta\": 500000.0,\n"
                                  "  \"tie_word_embeddings\": true,\n"
                                  "  \"torch_dtype\": \"bfloat16\",\n"
                                  "  \"transformers_version\": \"4.45.0.dev0\",\n"
                                  "  \"use_cache\": true,\n"
                                  "  \"vocab_size\": 128256\n"
                                  "}\n";

TEST(llama32_gqa_tied_llama3_rope) {
    fe_hf_config c;
    CHECK(parse(k_llama32_1b, &c) == FE_OK);
    CHECK(c.hidden_size == 2048 && c.intermediate_size == 8192 && c.num_hidden_layers == 16);
    CHECK(c.num_attention_heads == 32 && c.num_key_value_heads == 8 && c.head_dim == 64);
    CHECK(c.vocab_size == 128256 && c.max_position_embeddings == 131072);
    CHECK_NEAR(c.rms_norm_eps, 1e-5, 1e-20);
    CHECK_NEAR(c.rope_theta, 500000.0, 0);
    CHECK(!strcmp(c.rope_scaling_type, "llama3"));
    CHECK_NEAR(c.rope_factor, 32.0, 0);
    CHECK_NEAR(c.rope_low_freq_factor, 1.0, 0);
    CHECK_NEAR(c.rope_high_freq_factor, 4.0, 0);
    CHECK(c.rope_original_max_position_embeddings == 8192);
    CHECK(c.tie_word_embeddings && !c.attention_bias && !c.mlp_bias);
    CHECK(!strcmp(c.torch_dtype, "bfloat16"));
    CHECK(c.bos_token_id == 128000 && c.eos_token_id == 128001 && c.n_eos_token_ids == 3);
    CHECK(c.eos_token_ids[2] == 128009);
    /* 1,235,814,400 parameters: the published size of Llama 3.2 1B */
    CHECK(fe_hf_config_num_params(&c) == 1235814400LL);
}

TEST(defaults_for_a_minimal_config) {
    /* TinyStories-style: no kv heads, no head_dim, no eps/theta, old "type" key */
    const char *j = "{\"vocab_size\": 512, \"hidden_size\": 96, \"intermediate_size\": 256,"
                    " \"num_hidden_layers\": 2, \"num_attention_heads\": 6, \"eos_token_id\": 3,"
                    " \"rope_scaling\": null, \"bos_token_id\": null}";
    fe_hf_config c;
    CHECK(parse(j, &c) == FE_OK);
    CHECK(c.num_key_value_heads == 6 && c.head_dim == 16);
    CHECK_NEAR(c.rms_norm_eps, 1e-6, 1e-20);
    CHECK_NEAR(c.rope_theta, 10000.0, 0);
    CHECK(c.rope_scaling_type[0] == 0 && !c.tie_word_embeddings);
    CHECK(c.max_position_embeddings == 2048);
    CHECK(c.bos_token_id == -1 && c.eos_token_id == 3 && c.n_eos_token_ids == 1);
    CHECK(c.torch_dtype[0] == 0);
    /* untied: embed 512*96 + head 512*96 + 2 layers * (4*96*96 + 3*96*256 + 2*96) + 96 */
    CHECK(fe_hf_config_num_params(&c) ==
          2 * 512 * 96 + 2 * (4 * 96 * 96 + 3 * 96 * 256 + 2 * 96) + 96);
    /* without bos/eos at all LlamaConfig's 1 and 2 apply */
    const char *j2 =
        "{\"vocab_size\": 512, \"hidden_size\": 96, \"intermediate_size\": 256,"
        " \"num_hidden_layers\": 2, \"num_attention_heads\": 6, \"num_key_value_heads\": 2,"
        " \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}}";
    CHECK(parse(j2, &c) == FE_OK);
    CHECK(c.bos_token_id == 1 && c.eos_token_id == 2 && c.num_key_value_heads == 2);
    CHECK(!strcmp(c.rope_scaling_type, "linear") && c.rope_factor == 2.0);
}

#define BASE                                                                                       \
    "\"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 128, "                       \
    "\"num_hidden_layers\": 2"

TEST(refuses_bad_configs) {
    fe_hf_config c;
    CHECK_ERROR(parse("{\"vocab_size\": 10", &c) != FE_OK, "not valid JSON");
    CHECK_ERROR(parse("[1, 2]", &c) != FE_OK, "not a JSON object");
    CHECK_ERROR(parse("{\"vocab_size\": 100, \"intermediate_size\": 128, \"num_hidden_layers\": 2,"
                      " \"num_attention_heads\": 4}",
                      &c) != FE_OK,
                "missing field \"hidden_size\"");
    CHECK_ERROR(parse("{" BASE "}", &c) != FE_OK, "missing field \"num_attention_heads\"");
    CHECK_ERROR(parse("{\"vocab_size\": 100, \"hidden_size\": \"64\", \"intermediate_size\": 128,"
                      " \"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
                      &c) != FE_OK,
                "\"hidden_size\" must be an integer, got a string");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4.5}", &c) != FE_OK,
                "\"num_attention_heads\" must be an integer");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 5}", &c) != FE_OK,
                "num_attention_heads (5) does not divide hidden_size (64)");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 8, \"num_key_value_heads\": 3}", &c) !=
                    FE_OK,
                "num_key_value_heads (3) does not divide num_attention_heads (8)");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 0}", &c) != FE_OK,
                "must be a positive integer");
    CHECK_ERROR(parse("{\"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 128,"
                      " \"num_hidden_layers\": -1, \"num_attention_heads\": 4}",
                      &c) != FE_OK,
                "\"num_hidden_layers\" must be a positive integer");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4, \"rms_norm_eps\": \"small\"}", &c) !=
                    FE_OK,
                "\"rms_norm_eps\" must be a number");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4, \"rms_norm_eps\": 0}", &c) != FE_OK,
                "\"rms_norm_eps\" must be positive");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4, \"tie_word_embeddings\": 1}", &c) !=
                    FE_OK,
                "\"tie_word_embeddings\" must be true or false");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4, \"rope_scaling\": 2}", &c) != FE_OK,
                "\"rope_scaling\" must be an object or null");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4, \"rope_scaling\": {\"factor\": 2}}",
                      &c) != FE_OK,
                "rope_scaling has no \"rope_type\"");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4,"
                      " \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 2}}",
                      &c) != FE_OK,
                "unsupported rope_scaling type 'yarn'");
    CHECK_ERROR(
        parse(
            "{" BASE ", \"num_attention_heads\": 4, \"rope_scaling\": {\"rope_type\": \"llama3\","
            " \"factor\": 8, \"high_freq_factor\": 4, \"original_max_position_embeddings\": 8192}}",
            &c) != FE_OK,
        "missing field \"low_freq_factor\"");
    CHECK_ERROR(parse("{" BASE
                      ", \"num_attention_heads\": 4, \"rope_scaling\": {\"rope_type\": \"llama3\","
                      " \"factor\": 8, \"low_freq_factor\": 4, \"high_freq_factor\": 1,"
                      " \"original_max_position_embeddings\": 8192}}",
                      &c) != FE_OK,
                "low_freq_factor < high_freq_factor");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4, \"eos_token_id\": [1, \"2\"]}", &c) !=
                    FE_OK,
                "\"eos_token_id\" list holds a string");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4, \"eos_token_id\": {}}", &c) != FE_OK,
                "\"eos_token_id\" must be an integer or a list");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4, \"eos_token_id\": 100}", &c) != FE_OK,
                "eos_token_id 100 is outside the vocabulary");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4, \"model_type\": \"gpt2\"}", &c) !=
                    FE_OK,
                "model_type 'gpt2' is not a Llama model");
    CHECK_ERROR(parse("{" BASE ", \"num_attention_heads\": 4, \"hidden_act\": \"gelu\"}", &c) !=
                    FE_OK,
                "hidden_act 'gelu' is not supported");
    CHECK_ERROR(fe_hf_config_load("/nonexistent/config.json", &c) != FE_OK, "cannot open");
}

TEST(writer_round_trip_and_transformers_fields) {
    fe_hf_config c;
    CHECK(parse(k_llama32_1b, &c) == FE_OK);
    char dir[] = "/tmp/fe_cfg_test_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(fe_hf_config_save(path, &c) == FE_OK);
    fe_hf_config d;
    CHECK(fe_hf_config_load(dir, &d) == FE_OK); /* a folder works too */
    CHECK(cfg_equal(&c, &d));

    /* the fields LlamaForCausalLM's config loader looks at */
    char *s = fe_hf_config_to_json(&c);
    cJSON *o = cJSON_Parse(s);
    CHECK(o != NULL);
    const cJSON *arch = cJSON_GetObjectItem(o, "architectures");
    CHECK(cJSON_IsArray(arch) &&
          !strcmp(cJSON_GetArrayItem(arch, 0)->valuestring, "LlamaForCausalLM"));
    CHECK(!strcmp(cJSON_GetObjectItem(o, "model_type")->valuestring, "llama"));
    CHECK(!strcmp(cJSON_GetObjectItem(o, "hidden_act")->valuestring, "silu"));
    CHECK(cJSON_GetObjectItem(o, "num_key_value_heads")->valuedouble == 8);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(o, "eos_token_id")) == 3);
    const cJSON *rs = cJSON_GetObjectItem(o, "rope_scaling");
    CHECK(rs && !strcmp(cJSON_GetObjectItem(rs, "rope_type")->valuestring, "llama3"));
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(o, "tie_word_embeddings")));
    cJSON_Delete(o);
    free(s);

    /* an invalid config is not written, and the old file stays */
    fe_hf_config bad = c;
    bad.num_key_value_heads = 5;
    CHECK_ERROR(fe_hf_config_save(path, &bad) != FE_OK, "does not divide");
    CHECK(fe_hf_config_load(path, &d) == FE_OK && d.num_key_value_heads == 8);
    unlink(path);
    rmdir(dir);
}

TEST(default_config_needs_sizes) {
    fe_hf_config c = fe_hf_config_default();
    CHECK_ERROR(fe_hf_config_validate(&c) != FE_OK, "\"vocab_size\" must be a positive integer");
    c.vocab_size = 32, c.hidden_size = 16, c.intermediate_size = 32, c.num_hidden_layers = 1;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 4;
    CHECK(fe_hf_config_validate(&c) == FE_OK);
    char *s = fe_hf_config_to_json(&c);
    fe_hf_config d;
    CHECK(s && parse(s, &d) == FE_OK);
    CHECK(d.num_key_value_heads == 2 && d.bos_token_id == 1 && d.eos_token_id == 2);
    CHECK(!strcmp(d.torch_dtype, "float32")); /* the writer names a dtype */
    /* a count past int64 is reported as -1, not wrapped */
    d.vocab_size = (int64_t)1 << 40, d.hidden_size = (int64_t)1 << 40;
    CHECK(fe_hf_config_num_params(&d) == -1);
    free(s);
}
