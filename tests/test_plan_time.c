/* The time model's pieces without timing anything (issue 18): the pipeline schedule on a clock against the
 * schedule's bubble formula, and against a hand count for unbalanced stages; the cluster description's
 * reader (exact rates at measured shapes, the collective formulas, a clear error for each malformed field);
 * the model's FLOPs equal the run's accounting. Collective counts against real runs: test_plan_time.py. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/parallel.h"
#include "loom/plan.h"

static int fails = 0;
#define CHECK(cond, ...)                              \
    do {                                              \
        if (!(cond)) {                                \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);             \
            fprintf(stderr, "\n");                    \
            fails++;                                  \
        }                                             \
    } while (0)

static void pipeline_bubbles(void) {
    /* equal stages, no transfer time: the idle share is the theory's (p-1)/(m v + p-1), on every schedule */
    const int ps[] = {2, 3, 4, 8}, ms[] = {1, 4, 8, 16};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++)
            for (int v = 1; v <= 3; v++) {
                const int p = ps[a], m = ms[b] * (v > 1 ? p : 1);
                if (v > 1 && m % p) continue;
                double f[32], bw[32], busy[8] = {0};
                for (int g = 0; g < p * v; g++) f[g] = 1.0 / v, bw[g] = 2.0 / v;
                const double step = loom_pipeline_simulate(p, v > 1 ? LOOM_PP_INTERLEAVED : LOOM_PP_1F1B, v, m, f, bw, 0.0, busy);
                const double theory = (p - 1.0) / ((double)m * v + p - 1.0);
                const double idle = (step - busy[0]) / step;
                CHECK(fabs(idle - theory) < 1e-9, "p %d v %d m %d: simulated bubble %.6f, theory %.6f", p, v, m, idle, theory);
            }
    /* 1F1B with a slow middle stage that never waits (the last stage's forward and backward of a micro-batch
     * take no longer than the middle stage's next forward): the first stage's first forward, the middle
     * stage's m forwards and backwards back to back, the first stage's last backward */
    double f[3] = {1, 3, 1}, b[3] = {2, 6, 2};
    const double step = loom_pipeline_simulate(3, LOOM_PP_1F1B, 1, 4, f, b, 0.0, NULL);
    CHECK(fabs(step - (1.0 + 4 * 9.0 + 2.0)) < 1e-9, "unbalanced 1F1B: %.3f, want %.3f", step, 39.0);
    /* transfers: 1F1B, equal stages, each hop costs t: the first forward and last backward each cross p-1 hops */
    double g[2] = {1, 1}, h[2] = {2, 2};
    const double s2 = loom_pipeline_simulate(2, LOOM_PP_1F1B, 1, 1, g, h, 0.25, NULL);
    CHECK(fabs(s2 - (6.0 + 0.5)) < 1e-9, "one micro-batch over 2 stages with transfers: %.3f, want 6.5", s2);
}

static const char *CLUSTER =
    "{\"format\":\"loom-cluster\",\"version\":1,\"name\":\"t\",\"source\":\"measured\",\"device\":\"cpu\",\"gpu\":false,"
    "\"hosts\":1,\"cores_per_host\":2,\"memory_per_rank_bytes\":1000000000,\"peak_gflops\":{\"fp32\":100,\"bf16\":200},"
    "\"compute\":[{\"threads\":2,\"precision\":\"fp32\",\"gemm\":[[128,128,128,0,50],[1024,1024,1024,0,100],[128,128,128,2,40]],"
    "\"attention\":[[64,10,8],[256,20,16]],\"ns_per_element\":{\"norm\":1,\"activation\":2,\"elementwise\":0.5,"
    "\"embedding\":1,\"loss\":3,\"optimizer\":4,\"copy\":0.25}}],"
    "\"links\":[{\"ranks\":2,\"cross_host\":false,\"all_reduce\":[10,2],\"send\":[5,4]}],\"disk\":{\"read_GBps\":1,\"write_GBps\":0.5}}";

static loom_status parse(const char *text, loom_cluster *c) {
    loom_json *j = NULL;
    LOOM_CALL(loom_json_parse(text, strlen(text), &j));
    const loom_status st = loom_cluster_from_json(j, "test", c);
    loom_json_free(&j);
    return st;
}

static void cluster_reader(void) {
    loom_cluster *c = malloc(sizeof *c);
    CHECK(parse(CLUSTER, c) == LOOM_OK, "a valid description: %s", loom_error_message());
    /* exact at a measured shape; between two measured ones, a rate between theirs */
    const double s = loom_cluster_gemm_seconds(c, 2, 0, 0, 1024, 1024, 1024);
    CHECK(fabs(s - 2.0 * 1024 * 1024 * 1024 / 100e9) < 1e-12, "measured shape: %g s", s);
    const double mid = loom_cluster_gemm_seconds(c, 2, 0, 0, 362, 362, 362);
    const double rate = 2.0 * 362 * 362 * 362 / mid / 1e9;
    CHECK(rate > 50 && rate < 100, "interpolated rate %.1f outside (50, 100)", rate);
    CHECK(fabs(loom_cluster_gemm_seconds(c, 2, 0, 2, 128, 128, 128) - 2.0 * 128 * 128 * 128 / 40e9) < 1e-12,
          "the weight-gradient orientation's own rate");
    /* all-reduce: latency + 2 (n-1)/n S / busbw; a send: latency + S / busbw; one rank: nothing */
    const double ar = loom_cluster_coll_seconds(c, LOOM_COLL_ALLREDUCE, 2, 2, 1e9);
    CHECK(fabs(ar - (10e-6 + 1e9 / 2e9)) < 1e-9, "all-reduce %g", ar);
    CHECK(fabs(loom_cluster_coll_seconds(c, LOOM_COLL_SENDRECV, 2, 2, 4e9) - (5e-6 + 1.0)) < 1e-9, "send");
    CHECK(loom_cluster_coll_seconds(c, LOOM_COLL_ALLREDUCE, 1, 1, 1e9) == 0.0, "one rank communicates nothing");
    CHECK(fabs(loom_cluster_kernel_seconds(c, 2, 0, LOOM_KC_OPTIMIZER, 1e9) - 4.0) < 1e-9, "optimizer ns/element");
    /* written and read back: the same description */
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    loom_cluster_to_json(c, &sb);
    loom_cluster *d = malloc(sizeof *d);
    CHECK(!sb.failed && parse(sb.buf, d) == LOOM_OK, "round trip: %s", loom_error_message());
    CHECK(d->n_compute == 1 && d->compute[0].n_gemm == 3 && d->n_links == 1 &&
              fabs(d->links[0].busbw[LOOM_COLL_ALLREDUCE] - 2e9) < 1 && fabs(d->disk_write_bps - 0.5e9) < 1,
          "round trip changed the description");
    loom_strbuf_free(&sb);
    /* malformed: each a clear format error naming what is wrong */
    static const struct { const char *from, *to, *says; } bad[] = {
        {"\"format\":\"loom-cluster\"", "\"format\":\"other\"", "not a loom cluster"},
        {"[1024,1024,1024,0,100]", "[1024,1024,1024,7,100]", "gemm[1]"},
        {"[1024,1024,1024,0,100]", "[1024,1024,1024,0,-1]", "gemm[1]"},
        {"[256,20,16]", "[32,20,16]", "attention[1]"},
        {"\"copy\":0.25", "\"kopy\":0.25", "ns_per_element.copy"},
        {"\"all_reduce\":[10,2]", "\"all_reduce\":[10]", "links[0].all_reduce"},
        {"\"ranks\":2", "\"ranks\":1", "links[0].ranks"},
        {"\"precision\":\"fp32\"", "\"precision\":\"fp8\"", "precision"},
        {"\"fp32\":100", "\"fp32\":0", "peak_gflops.fp32"},
        {"\"cores_per_host\":2", "\"cores_per_host\":0", "cores_per_host"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[4096];
        const char *at = strstr(CLUSTER, bad[i].from);
        CHECK(at != NULL, "case %zu: pattern", i);
        if (!at) continue;
        snprintf(text, sizeof text, "%.*s%s%s", (int)(at - CLUSTER), CLUSTER, bad[i].to, at + strlen(bad[i].from));
        const loom_status st = parse(text, d);
        CHECK(st == LOOM_ERR_FORMAT && strstr(loom_error_message(), bad[i].says), "case %zu (%s): status %d, '%s'", i,
              bad[i].says, (int)st, loom_error_message());
        loom_error_clear();
    }
    /* truncated anywhere: an error, never a crash */
    for (size_t n = 0; n < strlen(CLUSTER); n += 7) {
        loom_json *j = NULL;
        if (loom_json_parse(CLUSTER, n, &j) == LOOM_OK) {
            if (loom_cluster_from_json(j, "test", d) == LOOM_OK) CHECK(n == strlen(CLUSTER), "a truncated file read");
            loom_json_free(&j);
        }
        loom_error_clear();
    }
    free(c);
    free(d);
}

/* the step's model FLOPs are the run's accounting (6 N + 12 L d T per token, the trainer's MFU numerator) */
static void model_flops(void) {
    loom_cluster *c = malloc(sizeof *c);
    if (parse(CLUSTER, c) != LOOM_OK) {
        CHECK(0, "cluster");
        free(c);
        return;
    }
    loom_run_config rc;
    CHECK(loom_run_config_init(&rc, "gpt2-l6") == LOOM_OK, "preset");
    rc.train.batch = 4;
    rc.train.seq_len = 64;
    rc.train.grad_accum = 2;
    snprintf(rc.train.mesh, sizeof rc.train.mesh, "dp=2");
    loom_plan_time_result r;
    CHECK(loom_plan_time(&rc, 2, c, &r) == LOOM_OK, "plan: %s", loom_error_message());
    const double want = loom_model_config_flops_per_token(&rc.model, 64) * 4 * 64 * 2;
    CHECK(fabs(r.model_flops - want) <= 1e-9 * want, "model FLOPs %g, the run counts %g", r.model_flops, want);
    double sum = 0;
    for (int k = 0; k < LOOM_PT_COUNT; k++) sum += r.breakdown_s[k];
    CHECK(fabs(sum - r.step_s) <= 1e-9 * r.step_s, "breakdown sums to %g of a %g s step", sum, r.step_s);
    free(c);
}

/* The FLOP count's N counts what is multiplied, not what is only looked up: GPT-2 124M's is nanoGPT's
 * 123.65M (its count without the position table), and an untied LLaMA's is the blocks and the head, counted
 * here by hand from the shapes (the input embedding had made llama-l6's MFU read 119%). */
static void product_params(void) {
    loom_model_config g, l;
    CHECK(loom_model_config_preset("gpt2-124m", &g) == LOOM_OK && loom_model_config_preset("llama-l6", &l) == LOOM_OK,
          "presets");
    CHECK(loom_model_config_product_params(&g) == 123653376, "gpt2-124m: %lld product parameters, nanoGPT 123653376",
          (long long)loom_model_config_product_params(&g));
    const int64_t C = l.d_model, hd = C / l.n_head, kv = l.n_kv_head * hd, F = l.d_ff, V = l.vocab_size;
    const int64_t by_hand = l.n_layer * (C * C + 2 * C * kv + C * C + 3 * C * F + 2 * C) + C + V * C;
    CHECK(!l.tie_embeddings && loom_model_config_product_params(&l) == by_hand,
          "llama-l6: %lld product parameters, by hand %lld", (long long)loom_model_config_product_params(&l),
          (long long)by_hand);
    CHECK(loom_model_config_num_params(&l) == by_hand + V * C, "llama-l6: the total adds the input embedding");
    const double f = loom_model_config_flops_per_token(&l, 256), want = 6.0 * by_hand + 12.0 * l.n_layer * C * 256;
    CHECK(fabs(f - want) <= 1e-9 * want, "llama-l6 FLOPs per token %g, want %g", f, want);
}

int main(void) {
    pipeline_bubbles();
    cluster_reader();
    model_flops();
    product_params();
    if (fails) fprintf(stderr, "%d checks failed\n", fails);
    else printf("plan time model: all checks passed\n");
    return fails ? 1 : 0;
}
