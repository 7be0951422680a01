/* Run logs: metrics lines, resume truncation, the SVG plot, atomic writes. */
#include "ferric/runlog.h"
#include "test.h"

#include <unistd.h>

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc(1, (size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) s[0] = 0;
    fclose(f);
    return s;
}

static int count(const char *s, const char *needle) {
    int c = 0;
    for (const char *p = s; (p = strstr(p, needle)); p++) c++;
    return c;
}

TEST(metrics_plot_and_resume) {
    char dir[] = "/tmp/fe_runlog_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    fe_runlog *r = fe_runlog_open(dir, -1);
    CHECK(r != NULL);
    for (int s = 1; s <= 10; s++) fe_runlog_train(r, s, 5.0 - 0.3 * s, 1e-3, 1.0, 1000);
    fe_runlog_val(r, 5, 3.7);
    fe_runlog_val(r, 10, 2.9);
    CHECK(fe_runlog_plot(r, "test run", 5.5) == FE_OK);
    fe_runlog_close(r);
    char path[256];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *m = slurp(path);
    CHECK(m && count(m, "\"loss\":") == 10 && count(m, "\"val_loss\":") == 2);
    free(m);
    /* a torn line from a kill is dropped; resuming at step 6 drops later records */
    FILE *f = fopen(path, "a");
    fputs("{\"step\":11,\"lo", f);
    fclose(f);
    r = fe_runlog_open(dir, 6);
    CHECK(r != NULL);
    fe_runlog_train(r, 7, 1.0, 1e-3, 1.0, 1000);
    fe_runlog_close(r);
    m = slurp(path);
    CHECK(m && count(m, "\"loss\":") == 7 && count(m, "\"val_loss\":") == 1 && !strstr(m, "\"lo\n"));
    free(m);
    snprintf(path, sizeof path, "%s/loss.svg", dir);
    char *svg = slurp(path);
    CHECK(svg && strstr(svg, "<svg") && count(svg, "<polyline") == 2 && strstr(svg, "</svg>"));
    free(svg);
    unlink(path);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    unlink(path);
    rmdir(dir);
}

TEST(atomic_write_failure_leaves_nothing) {
    CHECK_ERROR(fe_write_file_atomic("/nonexistent-dir/x", "abc", 3) != FE_OK, "cannot create");
    CHECK_ERROR(fe_runlog_open("/proc/nope/run", -1) == NULL, "cannot create folder");
}
