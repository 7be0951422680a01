/* The `ferric` command: dispatches to subcommands. */
#include "ferric/ferric.h"

#include <stdio.h>
#include <string.h>

int fe_cmd_eval(int argc, char **argv);
int fe_cmd_generate(int argc, char **argv);
int fe_cmd_info(int argc, char **argv);
int fe_cmd_prepare(int argc, char **argv);
int fe_cmd_tokenize(int argc, char **argv);
int fe_cmd_train(int argc, char **argv);

static const struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} k_commands[] = {
    {"train", fe_cmd_train, "train a Llama-architecture model (the main job)"},
    {"prepare", fe_cmd_prepare, "prepare data: the Jane Austen corpus, token shards"},
    {"generate", fe_cmd_generate, "continue a prompt with a Hugging Face Llama folder"},
    {"eval", fe_cmd_eval, "perplexity of a Hugging Face Llama folder on a text file"},
    {"info", fe_cmd_info, "list the tensors, dtypes, shapes and config of a model file or folder"},
    {"tokenize", fe_cmd_tokenize, "encode text to token ids (or decode) with a Hugging Face tokenizer"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: ferric <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof k_commands / sizeof *k_commands; i++)
        fprintf(f, "  %-10s %s\n", k_commands[i].name, k_commands[i].help);
    fprintf(f, "  --help     show this help\n"
               "  --version  print the version and the compiled-in backends\n"
               "\nRun 'ferric <command> --help' for a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("ferric %s (backends: cpu%s)\n", FE_VERSION_STRING,
               fe_device_available(FE_CUDA) ? ", cuda" : "");
        return 0;
    }
    for (size_t i = 0; i < sizeof k_commands / sizeof *k_commands; i++)
        if (!strcmp(cmd, k_commands[i].name)) return k_commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "ferric: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
