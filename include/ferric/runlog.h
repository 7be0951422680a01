/* ferric run logs: a metrics file (JSON lines) and an SVG loss-curve plot. */
#ifndef FERRIC_RUNLOG_H
#define FERRIC_RUNLOG_H

#include "ferric/core.h"
#include "ferric/io.h" /* fe_write_file_atomic */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fe_runlog fe_runlog;

/* Open (create) dir/metrics.jsonl for appending; creates dir. NULL on error. When
 * `resume_step` >= 0, lines of steps above it are dropped first (a resumed run). */
fe_runlog *fe_runlog_open(const char *dir, int64_t resume_step);
/* Append one training record. */
fe_status fe_runlog_train(fe_runlog *r, int64_t step, double loss, double lr, double grad_norm,
                          double tokens_per_s);
/* Append one validation record. */
fe_status fe_runlog_val(fe_runlog *r, int64_t step, double val_loss);
/* Write dir/loss.svg from every record so far (atomically). `baseline` (e.g. the
 * unigram entropy) draws a dashed reference line when > 0. */
fe_status fe_runlog_plot(fe_runlog *r, const char *title, double baseline);
void fe_runlog_close(fe_runlog *r);


#ifdef __cplusplus
}
#endif
#endif
