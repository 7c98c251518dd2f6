/* Private to the CLI: subcommand entry points and shared helpers. Only the CLI calls exit codes. */
#ifndef LOOM_CLI_H
#define LOOM_CLI_H
#include <stdio.h>

#include "loom/model.h"
#include "loom/plan.h"
#include "loom/run.h"
#include "loom/tokenizer.h"

int loom_cmd_train(int argc, char **argv);
int loom_cmd_bench(int argc, char **argv);
int loom_cmd_bench_cluster(int argc, char **argv); /* cmd_bench_cluster.c: `loom bench cluster` */
int loom_cmd_bench_decode(int argc, char **argv);  /* cmd_bench_decode.c: `loom bench decode` */
/* where `loom bench cluster` writes this machine's description by default, and `loom plan` reads it */
void loom_cli_cluster_default_path(char *buf, size_t n);
/* The cluster description at path (NULL: the default one) into *out (malloc'd; free it). Returns 0, or an exit
 * code after saying why (cmd names the command). */
int loom_cli_cluster_load(const char *cmd, const char *path, loom_cluster **out);
int loom_cmd_ckpt(int argc, char **argv);
int loom_cmd_generate(int argc, char **argv);  /* cmd_generate.c */
int loom_cmd_serve(int argc, char **argv);     /* cmd_serve.c */
int loom_cmd_tokenizer(int argc, char **argv); /* cmd_tokenizer.c */
int loom_cmd_data(int argc, char **argv);      /* cmd_data.c */
int loom_cmd_export(int argc, char **argv);    /* cmd_hf.c */
int loom_cmd_import(int argc, char **argv);    /* cmd_hf.c */
int loom_cmd_merge(int argc, char **argv);     /* cmd_hf.c */
int loom_cmd_plot(int argc, char **argv);      /* cmd_plot.c */
int loom_cmd_launch(int argc, char **argv);    /* cmd_launch.c */
int loom_cmd_plan(int argc, char **argv);      /* cmd_plan.c */
int loom_cmd_events(int argc, char **argv);    /* cmd_events.c */
/* cmd_train.c: a run config from argv the way `loom train` reads it (preset, --config, --set, flags);
 * own_flags: NULL or {"--flag", "1" (takes a value) | "0", ..., NULL}, flags the caller reads itself.
 * Returns 0 (built), -1 (--help: printed) or an exit code. */
int loom_cli_run_config(int argc, char **argv, const char *cmd, const char *const *own_flags, loom_run_config *out,
                        double *peak_out);
/* The GEMM peak of `threads` in a run's precision (bf16's for bf16; fp32's for fp32 and fp16, whose products
 * run on fp32 units here), from the cache or measured now (and cached); kernel: its precision and kernel. 0
 * when unknown. */
double loom_cli_peak_gflops(int threads, loom_precision precision, char *kernel, size_t kernel_size);
/* The median of n timings (sorted in place): the benchmarks' one summary of repeated runs (cmd_bench.c). */
double loom_cli_median(double *v, int n);
/* the cores online (at least 1): the default thread count (cmd_bench.c) */
int loom_cli_cores(void);
/* Prints the error message (and the trace with LOOM_TRACE=1) and returns the exit code. */
int loom_cli_fail(const char *cmd);
/* A checkpoint's model on a backend of its own, with its tokenizer (cmd_generate.c; `generate`, `export`). */
typedef struct {
    loom_backend *be;
    loom_comm *comm;
    loom_mem mem;       /* the model points at it: the struct stays where it was opened */
    loom_model *model;
    loom_json *meta;
    loom_tokenizer *tok;
    const char *tok_name;
} loom_cli_ckpt;
/* Opens ckpt in `precision` on a backend made from bc, then the tokenizer tok_name (NULL: the one the
 * checkpoint records, or the obvious one for its vocabulary). Returns 0, or an exit code after printing why
 * (cmd names the command). Close it either way. */
int loom_cli_ckpt_open(const char *cmd, const char *ckpt, loom_precision precision, const loom_backend_config *bc,
                       const char *tok_name, loom_cli_ckpt *c);
void loom_cli_ckpt_close(loom_cli_ckpt *c);
#endif
