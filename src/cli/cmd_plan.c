/* loom plan: predictions before anything runs (include/loom/plan.h). --memory: every rank's peak memory by
 * category; --time: one layout's step time by category, from a cluster description; --auto: every layout of
 * N ranks searched, the fastest that fit first. Takes the same configuration arguments as `loom train`. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "loom/plan.h"

static void plan_help(void) {
    printf("usage: loom plan --memory|--time|--auto [--world N] [--json] [--cluster FILE] [--top K] [--explain DIR]\n"
           "                 [--mem-limit BYTES] [train's configuration: --preset, --config, --set, --batch,\n"
           "                 --seq-len, --grad-accum, --recompute, --zero, --mesh, --optimizer, --precision,\n"
           "                 --threads, --mem-budget ...]\n\n"
           "--memory: each rank's peak bytes of parameters, gradients, optimizer state, activations and workspace\n"
           "for the run `loom train` would make with the same arguments on N ranks (default: the mesh's product),\n"
           "from the layout and activation arena the run allocates; with --mem-budget, the memory manager's\n"
           "placement (what is pinned in RAM, what goes to files). --json: one JSON object per rank.\n"
           "--time: that run's step predicted from the cluster description (--cluster, default the one `loom bench\n"
           "cluster` wrote to the cache): ms/step, tokens/s, MFU, peak memory and the breakdown by category; --json:\n"
           "step_ms, tokens_per_sec, mfu, breakdown (ms per category), the collectives' counts and bytes.\n"
           "--explain DIR (with --time): beside it, the run in DIR made with the same arguments and --profile\n"
           "(its profile.json), category by category (--json: measured_ms).\n"
           "--auto: every layout of N ranks for the same model and global batch (--batch x --grad-accum sequences):\n"
           "dp x tp x pp x sp, ZeRO stage, recompute, micro-batches, schedule, Megatron-SP, precision (fp32, bf16),\n"
           "offload; drops those over --mem-limit (default: the cluster's memory per rank), ranks the rest by\n"
           "predicted step time and prints the top K (default 5) with the `loom train` flags of each.\n");
}

/* --explain DIR: a measured run's profile (DIR/profile.json, `loom train --profile`) in the prediction's
 * categories: [gemm, attention, memory-bound, optimizer, outside the kernels, step] in ms per step */
enum { EXPLAIN_OUTSIDE = 4, EXPLAIN_STEP = 5, EXPLAIN_N = 6 };
static int read_explain(const char *dir, double *ms) {
    char path[4200];
    snprintf(path, sizeof path, "%s/profile.json", dir);
    loom_json *j = NULL;
    if (loom_json_parse_file(path, &j) != LOOM_OK) {
        fprintf(stderr, "loom plan: --explain needs a run made with --profile (%s)\n", path);
        return loom_cli_fail("plan");
    }
    const loom_json *per = loom_json_get(j, "ms_per_step"), *step = loom_json_get(j, "step_ms");
    memset(ms, 0, EXPLAIN_N * sizeof *ms);
    int ok = per && per->type == LOOM_JSON_OBJECT && step && step->type == LOOM_JSON_NUMBER;
    for (const loom_json *e = ok ? per->child : NULL; e; e = e->next) {
        if (e->type != LOOM_JSON_NUMBER) ok = 0;
        else if (!strcmp(e->key, "matmul")) ms[LOOM_PT_GEMM] += e->number;
        else if (!strcmp(e->key, "attention")) ms[LOOM_PT_ATTENTION] += e->number;
        else if (!strcmp(e->key, "optimizer")) ms[LOOM_PT_OPTIMIZER] += e->number;
        else if (!strcmp(e->key, "other")) ms[EXPLAIN_OUTSIDE] += e->number;
        else ms[LOOM_PT_MEMBOUND] += e->number; /* norm, activation, rope, embedding, loss, elementwise, copy */
    }
    if (ok) ms[EXPLAIN_STEP] = step->number;
    loom_json_free(&j);
    if (!ok) fprintf(stderr, "loom plan: %s is not a profile (step_ms, ms_per_step)\n", path);
    return ok ? 0 : 1;
}

/* --time: one layout (explain: a measured run's directory, or NULL) */
static int plan_time(const loom_run_config *run, int world, const loom_cluster *c, int json, const char *explain) {
    loom_plan_time_result r;
    if (loom_plan_time(run, world, c, &r) != LOOM_OK) return loom_cli_fail("plan");
    double meas[EXPLAIN_N] = {0}, pred[EXPLAIN_N] = {0};
    if (explain) {
        const int code = read_explain(explain, meas);
        if (code) return code;
        for (int k = 0; k < LOOM_PT_COUNT; k++)
            pred[k <= LOOM_PT_OPTIMIZER ? k : EXPLAIN_OUTSIDE] += 1e3 * r.breakdown_s[k];
        pred[EXPLAIN_STEP] = 1e3 * r.step_s;
    }
    static const char *const explain_names[EXPLAIN_N] = {"gemm", "attention", "memory-bound", "optimizer",
                                                         "outside kernels", "step"};
    int dom = 0;
    for (int k = 1; k < LOOM_PT_COUNT; k++)
        if (r.breakdown_s[k] > r.breakdown_s[dom]) dom = k;
    if (json) {
        printf("{\"step_ms\":%.4f,\"tokens_per_sec\":%.2f,\"mfu\":%.5f,\"peak_bytes\":%lld,\"dp\":%d,\"tp\":%d,"
               "\"pp\":%d,\"sp\":%d,\"pp_bubble\":%.5f,\"breakdown\":{", r.step_s * 1e3, r.tokens_per_sec, r.mfu,
               (long long)r.peak_bytes, r.dp, r.tp, r.pp, r.sp, r.pp_bubble);
        for (int k = 0; k < LOOM_PT_COUNT; k++)
            printf("%s\"%s\":%.4f", k ? "," : "", loom_plan_cost_name((loom_plan_cost)k), r.breakdown_s[k] * 1e3);
        printf("},\"dominant\":\"%s\"", loom_plan_cost_name((loom_plan_cost)dom));
        static const char *const keys[LOOM_COLL_COUNT] = {"allreduce", "reduce_scatter", "allgather", "broadcast", "send",
                                                          "barrier"};
        for (int k = 0; k < LOOM_COLL_COUNT; k++) {
            if (r.tp_calls[k]) printf(",\"tp_%s_calls\":%lld,\"tp_%s_bytes\":%lld", keys[k], (long long)r.tp_calls[k],
                                      keys[k], (long long)r.tp_bytes[k]);
            if (r.dp_calls[k]) printf(",\"dp_%s_calls\":%lld,\"dp_%s_bytes\":%lld", keys[k], (long long)r.dp_calls[k],
                                      keys[k], (long long)r.dp_bytes[k]);
        }
        if (r.sp_calls) printf(",\"sp_send_calls\":%lld,\"sp_send_bytes\":%lld", (long long)r.sp_calls, (long long)r.sp_bytes);
        if (r.dp_refill_floats) printf(",\"dp_refill_floats\":%lld", (long long)r.dp_refill_floats);
        if (r.offload_read_bytes || r.offload_write_bytes)
            printf(",\"offload_read_bytes\":%lld,\"offload_write_bytes\":%lld", (long long)r.offload_read_bytes,
                   (long long)r.offload_write_bytes);
        if (explain) {
            printf(",\"measured_ms\":{");
            for (int k = 0; k < EXPLAIN_N; k++) printf("%s\"%s\":%.4f", k ? "," : "", explain_names[k], meas[k]);
            printf("}");
        }
        printf(",\"model_flops\":%.6g}\n", r.model_flops);
        return 0;
    }
    printf("predicted step of %s (batch %lld x %lld x %lld accum) on %d ranks, mesh dp=%d tp=%d pp=%d sp=%d, %s:\n"
           "  %.2f ms/step, %.0f tokens/s, MFU %.1f%%, peak %.1f MiB per rank (largest rank)\n",
           run->preset, (long long)run->train.batch, (long long)run->train.seq_len, (long long)run->train.grad_accum,
           world, r.dp, r.tp, r.pp, r.sp, c->name, r.step_s * 1e3, r.tokens_per_sec, 100 * r.mfu,
           r.peak_bytes / 1048576.0);
    for (int k = 0; k < LOOM_PT_COUNT; k++)
        if (r.breakdown_s[k] > 0)
            printf("  %-13s %9.2f ms %5.1f%%\n", loom_plan_cost_name((loom_plan_cost)k), r.breakdown_s[k] * 1e3,
                   100 * r.breakdown_s[k] / r.step_s);
    if (r.pp > 1) printf("  pipeline: the busiest stage idles %.1f%% of the step\n", 100 * r.pp_bubble);
    if (explain) { /* outside the kernels: communication, the bubble, offload and the host's own work */
        printf("beside the measured run in %s (its profile, rank 0, per step):\n  %-16s %11s %11s\n", explain,
               "category", "predicted", "measured");
        for (int k = 0; k < EXPLAIN_N; k++)
            printf("  %-16s %8.2f ms %8.2f ms\n", explain_names[k], pred[k], meas[k]);
    }
    return 0;
}

static const char *recompute_name(int r) { return r == LOOM_RECOMPUTE_FULL ? "full" : r == LOOM_RECOMPUTE_ATTN ? "attn" : "none"; }

/* the `loom train` flags of a layout */
static void layout_flags(const loom_run_config *rc, char *dst, size_t n) {
    const loom_train_config *t = &rc->train;
    int o = snprintf(dst, n, "--mesh %s --zero %lld --batch %lld --grad-accum %lld --recompute %s --precision %s", t->mesh,
                     (long long)t->zero, (long long)t->batch, (long long)t->grad_accum, recompute_name(t->recompute),
                     t->precision == LOOM_PRECISION_BF16 ? "bf16" : t->precision == LOOM_PRECISION_FP16 ? "fp16" : "fp32");
    if (t->threads > 0 && o < (int)n) o += snprintf(dst + o, n - (size_t)o, " --threads %lld", (long long)t->threads);
    if (t->pp_schedule && o < (int)n) o += snprintf(dst + o, n - (size_t)o, " --set train.pp_schedule=interleaved");
    if (t->tp_seq_parallel && o < (int)n) o += snprintf(dst + o, n - (size_t)o, " --set train.tp_seq_parallel=1");
    if (t->offload && o < (int)n) snprintf(dst + o, n - (size_t)o, " --mem-budget %lld --set train.offload=1", (long long)t->mem_budget);
}

/* --auto: the search */
static int plan_auto(const loom_run_config *run, int world, const loom_cluster *c, int json, int top, int64_t mem_limit) {
    loom_plan_search so;
    memset(&so, 0, sizeof so);
    so.mem_limit = mem_limit;
    so.try_offload = 1;
    loom_plan_choice *ch = NULL;
    int n = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (loom_plan_auto(run, world, c, &so, top, &ch, &n) != LOOM_OK) return loom_cli_fail("plan");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (!json)
        printf("%s, global batch %lld x %lld on %d ranks of %s: %lld layouts, %lld fit in %.1f GiB, searched in %.2f s\n",
               run->preset, (long long)(run->train.batch * run->train.grad_accum), (long long)run->train.seq_len, world,
               c->name, (long long)so.evaluated, (long long)so.fitting,
               (so.mem_limit ? so.mem_limit : c->memory_per_rank) / 1073741824.0, secs);
    for (int i = 0; i < n; i++) {
        const loom_plan_time_result *r = &ch[i].t;
        int dom = 0;
        for (int k = 1; k < LOOM_PT_COUNT; k++)
            if (r->breakdown_s[k] > r->breakdown_s[dom]) dom = k;
        char flags[512];
        layout_flags(&ch[i].rc, flags, sizeof flags);
        if (json) {
            printf("{\"rank\":%d,\"step_ms\":%.4f,\"tokens_per_sec\":%.2f,\"mfu\":%.5f,\"peak_bytes\":%lld,"
                   "\"dominant\":\"%s\",\"dominant_share\":%.4f,\"search_seconds\":%.3f,\"evaluated\":%lld,\"args\":",
                   i + 1, r->step_s * 1e3, r->tokens_per_sec, r->mfu, (long long)r->peak_bytes,
                   loom_plan_cost_name((loom_plan_cost)dom), r->breakdown_s[dom] / r->step_s, secs, (long long)so.evaluated);
            loom_strbuf sb;
            loom_strbuf_init(&sb);
            loom_json_write_string(&sb, flags);
            printf("%s}\n", sb.failed ? "\"\"" : sb.buf);
            loom_strbuf_free(&sb);
        } else {
            printf("%2d. %9.2f ms/step %10.0f tokens/s  MFU %5.1f%%  %8.1f MiB/rank  %s %.0f%%\n    %s\n", i + 1,
                   r->step_s * 1e3, r->tokens_per_sec, 100 * r->mfu, r->peak_bytes / 1048576.0,
                   loom_plan_cost_name((loom_plan_cost)dom), 100 * r->breakdown_s[dom] / r->step_s, flags);
        }
    }
    free(ch);
    if (!n) {
        fprintf(stderr, "loom plan: no layout of %d ranks fits in %.1f GiB per rank\n", world,
                (so.mem_limit ? so.mem_limit : c->memory_per_rank) / 1073741824.0);
        return 1;
    }
    return 0;
}

int loom_cmd_plan(int argc, char **argv) {
    int memory = 0, json = 0, world = 0, timing = 0, autop = 0, top = 5;
    const char *cluster_path = NULL, *explain = NULL;
    int64_t mem_limit = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            plan_help();
            return 0;
        }
        if (!strcmp(argv[i], "--memory")) memory = 1;
        else if (!strcmp(argv[i], "--time")) timing = 1;
        else if (!strcmp(argv[i], "--auto")) autop = 1;
        else if (!strcmp(argv[i], "--cluster") && i + 1 < argc) cluster_path = argv[++i];
        else if (!strcmp(argv[i], "--explain") && i + 1 < argc) explain = argv[++i];
        else if (!strcmp(argv[i], "--top") && i + 1 < argc) top = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mem-limit") && i + 1 < argc) mem_limit = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--world")) {
            if (i + 1 >= argc || atoi(argv[i + 1]) < 1) {
                fprintf(stderr, "loom plan: --world needs a rank count >= 1\n");
                return 2;
            }
            world = atoi(argv[++i]);
        }
    }
    if (memory + timing + autop != 1 || top < 1) {
        fprintf(stderr, "loom plan: say what to predict (one of --memory, --time, --auto; --top >= 1); see loom plan --help\n");
        return 2;
    }
    static const char *const own[] = {"--memory", "0", "--json", "0", "--world", "1", "--time", "0", "--auto", "0",
                                      "--cluster", "1", "--top", "1", "--mem-limit", "1", "--explain", "1", NULL};
    loom_run_config run;
    double peak;
    int rc = loom_cli_run_config(argc, argv, "plan", own, &run, &peak);
    if (rc) return rc < 0 ? 0 : rc;
    if (!world) {
        loom_mesh_shape s;
        if (loom_mesh_shape_parse(run.train.mesh, &s) != LOOM_OK) return loom_cli_fail("plan");
        world = s.dp * s.pp * s.tp * s.sp;
    }
    if (timing || autop) {
        loom_cluster *c = NULL;
        const int code = loom_cli_cluster_load("plan", cluster_path, &c);
        if (code) return code;
        const int done = timing ? plan_time(&run, world, c, json, explain) : plan_auto(&run, world, c, json, top, mem_limit);
        free(c);
        return done;
    }
    loom_plan_rank *ranks = NULL;
    int n = 0;
    if (loom_plan_memory(&run, world, &ranks, &n) != LOOM_OK) return loom_cli_fail("plan");
    if (!json)
        printf("predicted peak MiB per rank (%s, batch %lld x %lld, ZeRO-%lld, mesh '%s' on %d ranks, recompute %s)\n"
               "  rank  dp pp tp sp    params     grads     optim      acts workspace     total\n",
               run.preset, (long long)run.train.batch, (long long)run.train.seq_len, (long long)run.train.zero,
               run.train.mesh[0] ? run.train.mesh : "dp=all", world,
               run.train.recompute == LOOM_RECOMPUTE_NONE ? "none" : run.train.recompute == LOOM_RECOMPUTE_ATTN ? "attn" : "full");
    for (int i = 0; i < n; i++) {
        const loom_plan_rank *p = &ranks[i];
        int64_t total = 0;
        for (int c = 0; c < LOOM_MEM_N_CATEGORIES; c++) total += p->bytes[c];
        if (json) {
            printf("{\"rank\":%d,\"dp\":%d,\"pp\":%d,\"tp\":%d,\"sp\":%d", p->world_rank, p->dp_rank, p->pp_rank,
                   p->tp_rank, p->sp_rank);
            for (int c = 0; c < LOOM_MEM_N_CATEGORIES; c++)
                printf(",\"%s_bytes\":%lld", loom_mem_category_name((loom_mem_category)c), (long long)p->bytes[c]);
            printf(",\"total_bytes\":%lld,\"zero\":%d,\"offload_pinned_bytes\":%lld,\"offload_file_bytes\":%lld}\n",
                   (long long)total, p->stage, (long long)p->pinned_bytes, (long long)p->file_bytes);
        } else {
            printf("  %4d %3d %2d %2d %2d", p->world_rank, p->dp_rank, p->pp_rank, p->tp_rank, p->sp_rank);
            for (int c = 0; c < LOOM_MEM_N_CATEGORIES; c++) printf(" %9.2f", p->bytes[c] / 1048576.0);
            printf(" %9.2f\n", total / 1048576.0);
            if (p->offload_mask)
                printf("        memory manager: ZeRO-%d layout, %.1f MiB of state pinned in RAM, %.1f MiB in files\n",
                       p->stage, p->pinned_bytes / 1048576.0, p->file_bytes / 1048576.0);
        }
    }
    free(ranks);
    return 0;
}
