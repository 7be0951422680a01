/* The `ferric` command: dispatches to subcommands. */
#include "ferric/ferric.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: ferric <command> [options]\n"
            "\n"
            "commands:\n"
            "  --help       show this help\n"
            "  --version    print the version and the compiled-in backends\n"
            "\n"
            "Run 'ferric <command> --help' for a command's options.\n");
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
    fprintf(stderr, "ferric: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
