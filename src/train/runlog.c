/* Run logs: metrics as JSON lines and a loss-curve plot as a standalone SVG. */
#include "ferric/runlog.h"
#include "ferric/io.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct point {
    int64_t step;
    double v;
} point;

typedef struct series {
    point *p;
    int64_t n, cap;
} series;

struct fe_runlog {
    char dir[1024];
    FILE *f;
    series train, val;
};

static bool push(series *s, int64_t step, double v) {
    if (s->n == s->cap) {
        int64_t cap = s->cap ? s->cap * 2 : 256;
        point *p = realloc(s->p, (size_t)cap * sizeof *p);
        if (!p) return false;
        s->p = p, s->cap = cap;
    }
    s->p[s->n++] = (point){step, v};
    return true;
}

/* Read the existing metrics, keep records up to resume_step, rewrite the file. */
static fe_status reload(fe_runlog *r, const char *path, int64_t resume_step) {
    FILE *f = fopen(path, "r");
    if (!f) return FE_OK;
    char line[512];
    size_t cap = 1 << 16, len = 0;
    char *keep = malloc(cap);
    if (!keep) {
        fclose(f);
        return fe_set_error(FE_ERR_OOM, "runlog: out of memory");
    }
    while (fgets(line, sizeof line, f)) {
        long long step;
        double v;
        bool is_val = strstr(line, "\"val_loss\"") != NULL;
        const char *key = is_val ? "\"val_loss\":" : "\"loss\":";
        const char *s = strstr(line, "\"step\":"), *k = strstr(line, key);
        if (!s || !k || sscanf(s + 7, "%lld", &step) != 1 || sscanf(k + strlen(key), "%lf", &v) != 1)
            continue; /* a torn last line from a kill: drop it */
        if (step > resume_step) continue;
        size_t l = strlen(line);
        if (line[l - 1] != '\n') continue;
        if (len + l + 1 > cap) {
            char *nk = realloc(keep, cap *= 2);
            if (!nk) break;
            keep = nk;
        }
        memcpy(keep + len, line, l), len += l;
        push(is_val ? &r->val : &r->train, step, v);
    }
    fclose(f);
    fe_status st = fe_write_file_atomic(path, keep, len);
    free(keep);
    return st;
}

fe_runlog *fe_runlog_open(const char *dir, int64_t resume_step) {
    if (!dir) {
        fe_set_error(FE_ERR_ARG, "runlog: no folder given");
        return NULL;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fe_set_error(FE_ERR_IO, "cannot create folder %s: %s", dir, strerror(errno));
        return NULL;
    }
    fe_runlog *r = calloc(1, sizeof *r);
    if (!r) {
        fe_set_error(FE_ERR_OOM, "runlog: out of memory");
        return NULL;
    }
    snprintf(r->dir, sizeof r->dir, "%s", dir);
    char path[1100];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    if (resume_step >= 0 && reload(r, path, resume_step) != FE_OK) {
        fe_runlog_close(r);
        return NULL;
    }
    r->f = fopen(path, resume_step >= 0 ? "a" : "w");
    if (!r->f) {
        fe_set_error(FE_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        fe_runlog_close(r);
        return NULL;
    }
    return r;
}

fe_status fe_runlog_train(fe_runlog *r, int64_t step, double loss, double lr, double grad_norm,
                          double tokens_per_s) {
    if (!r) return fe_set_error(FE_ERR_ARG, "runlog is NULL");
    push(&r->train, step, loss);
    fprintf(r->f, "{\"step\":%" PRId64 ",\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f}\n",
            step, loss, lr, grad_norm, tokens_per_s);
    return fflush(r->f) == 0 ? FE_OK : fe_set_error(FE_ERR_IO, "cannot write metrics");
}

fe_status fe_runlog_val(fe_runlog *r, int64_t step, double val_loss) {
    if (!r) return fe_set_error(FE_ERR_ARG, "runlog is NULL");
    push(&r->val, step, val_loss);
    fprintf(r->f, "{\"step\":%" PRId64 ",\"val_loss\":%.6f}\n", step, val_loss);
    return fflush(r->f) == 0 ? FE_OK : fe_set_error(FE_ERR_IO, "cannot write metrics");
}

/* A growing text buffer for the SVG. */
typedef struct sbuf {
    char *s;
    size_t n, cap;
    bool oom;
} sbuf;

__attribute__((format(printf, 2, 3))) static void put(sbuf *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->s && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 8192) + (size_t)k;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = true;
            return;
        }
        b->s = s, b->cap = cap;
    }
}

/* A "nice" tick step near range/5 (1, 2 or 5 times a power of ten). */
static double nice_step(double range) {
    double raw = range / 5, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

static void polyline(sbuf *b, const series *s, double x0, double y0, double w, double h,
                     double smax, double lo, double hi, const char *style) {
    if (s->n == 0) return;
    put(b, "<polyline fill=\"none\" %s points=\"", style);
    /* thin long series to about 2000 points */
    int64_t every = s->n > 2000 ? s->n / 2000 : 1;
    for (int64_t i = 0; i < s->n; i += every) {
        double x = x0 + w * (double)s->p[i].step / (smax > 0 ? smax : 1);
        double v = fmin(fmax(s->p[i].v, lo), hi);
        put(b, "%.1f,%.1f ", x, y0 + h - h * (v - lo) / (hi - lo));
    }
    put(b, "\"/>\n");
}

fe_status fe_runlog_plot(fe_runlog *r, const char *title, double baseline) {
    if (!r) return fe_set_error(FE_ERR_ARG, "runlog is NULL");
    const double W = 800, H = 480, x0 = 70, y0 = 40, w = W - 100, h = H - 100;
    double lo = INFINITY, hi = -INFINITY, smax = 1;
    const series *all[2] = {&r->train, &r->val};
    for (int k = 0; k < 2; k++)
        for (int64_t i = 0; i < all[k]->n; i++) {
            double v = all[k]->p[i].v;
            if (!isfinite(v)) continue;
            lo = fmin(lo, v), hi = fmax(hi, v);
            smax = fmax(smax, (double)all[k]->p[i].step);
        }
    if (baseline > 0) lo = fmin(lo, baseline), hi = fmax(hi, baseline);
    if (!(lo < hi)) lo = (isfinite(lo) ? lo : 0) - 1, hi = lo + 2;
    double step = nice_step(hi - lo);
    lo = floor(lo / step) * step, hi = ceil(hi / step) * step;
    sbuf b = {0};
    put(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
        W, H);
    put(&b, "<text x=\"%.0f\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n", W / 2,
        title ? title : "loss");
    for (double t = lo; t <= hi + step / 2; t += step) { /* y grid and labels */
        double y = y0 + h - h * (t - lo) / (hi - lo);
        put(&b, "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, x0 + w, y, y);
        put(&b, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", x0 - 6, y + 4, t);
    }
    double xs = nice_step(smax);
    for (double t = 0; t <= smax + xs / 2; t += xs) { /* x labels */
        double x = x0 + w * t / smax;
        put(&b, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%g</text>\n", x, y0 + h + 18, t);
    }
    put(&b, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#333\"/>\n", x0, y0, w, h);
    put(&b, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">step</text>\n", x0 + w / 2, H - 20);
    put(&b, "<text x=\"18\" y=\"%.0f\" text-anchor=\"middle\" transform=\"rotate(-90 18 %.0f)\">loss (nats/token)</text>\n",
        y0 + h / 2, y0 + h / 2);
    if (baseline > 0) {
        double y = y0 + h - h * (baseline - lo) / (hi - lo);
        put(&b, "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#999\" stroke-dasharray=\"6 4\"/>\n",
            x0, x0 + w, y, y);
    }
    polyline(&b, &r->train, x0, y0, w, h, smax, lo, hi, "stroke=\"#1f77b4\" stroke-width=\"1.5\"");
    polyline(&b, &r->val, x0, y0, w, h, smax, lo, hi, "stroke=\"#d62728\" stroke-width=\"2\"");
    for (int64_t i = 0; i < r->val.n; i++) {
        double x = x0 + w * (double)r->val.p[i].step / smax;
        double v = fmin(fmax(r->val.p[i].v, lo), hi);
        put(&b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d62728\"/>\n", x, y0 + h - h * (v - lo) / (hi - lo));
    }
    double lx = x0 + w - 190, ly = y0 + 16;
    put(&b, "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.0f\" y2=\"%.0f\" stroke=\"#1f77b4\" stroke-width=\"2\"/>"
            "<text x=\"%.0f\" y=\"%.0f\">train loss</text>\n", lx, lx + 24, ly, ly, lx + 30, ly + 4);
    put(&b, "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.0f\" y2=\"%.0f\" stroke=\"#d62728\" stroke-width=\"2\"/>"
            "<text x=\"%.0f\" y=\"%.0f\">validation loss</text>\n", lx, lx + 24, ly + 18, ly + 18, lx + 30, ly + 22);
    if (baseline > 0)
        put(&b, "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.0f\" y2=\"%.0f\" stroke=\"#999\" stroke-dasharray=\"6 4\"/>"
                "<text x=\"%.0f\" y=\"%.0f\">unigram baseline</text>\n", lx, lx + 24, ly + 36, ly + 36, lx + 30, ly + 40);
    put(&b, "</svg>\n");
    if (b.oom) {
        free(b.s);
        return fe_set_error(FE_ERR_OOM, "runlog: out of memory for the plot");
    }
    char path[1100];
    snprintf(path, sizeof path, "%s/loss.svg", r->dir);
    fe_status st = fe_write_file_atomic(path, b.s, b.n);
    free(b.s);
    return st;
}

void fe_runlog_close(fe_runlog *r) {
    if (!r) return;
    if (r->f) fclose(r->f);
    free(r->train.p);
    free(r->val.p);
    free(r);
}
