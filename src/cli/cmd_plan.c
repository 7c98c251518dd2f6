/* loom plan --memory: every rank's peak memory by category, predicted from the run config before anything
 * runs (include/loom/plan.h). Takes the same configuration arguments as `loom train`. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "loom/plan.h"

static void plan_help(void) {
    printf("usage: loom plan --memory [--world N] [--json] [train's configuration: --preset, --config, --set,\n"
           "                 --batch, --seq-len, --grad-accum, --recompute, --zero, --mesh, --optimizer,\n"
           "                 --precision, --mem-budget ...]\n\n"
           "Predicts each rank's peak bytes of parameters, gradients, optimizer state, activations and workspace\n"
           "for the run `loom train` would make with the same arguments on N ranks (default: the mesh's product),\n"
           "from the layout and activation arena the run allocates; with --mem-budget, the memory manager's\n"
           "placement (what is pinned in RAM, what goes to files). --json: one JSON object per rank.\n");
}

int loom_cmd_plan(int argc, char **argv) {
    int memory = 0, json = 0, world = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            plan_help();
            return 0;
        }
        if (!strcmp(argv[i], "--memory")) memory = 1;
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--world")) {
            if (i + 1 >= argc || atoi(argv[i + 1]) < 1) {
                fprintf(stderr, "loom plan: --world needs a rank count >= 1\n");
                return 2;
            }
            world = atoi(argv[++i]);
        }
    }
    if (!memory) {
        fprintf(stderr, "loom plan: say what to predict (--memory); see loom plan --help\n");
        return 2;
    }
    static const char *const own[] = {"--memory", "0", "--json", "0", "--world", "1", NULL};
    loom_run_config run;
    double peak;
    int rc = loom_cli_run_config(argc, argv, "plan", own, &run, &peak);
    if (rc) return rc < 0 ? 0 : rc;
    if (!world) {
        loom_mesh_shape s;
        if (loom_mesh_shape_parse(run.train.mesh, &s) != LOOM_OK) return loom_cli_fail("plan");
        world = s.dp * s.pp * s.tp * s.sp;
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
