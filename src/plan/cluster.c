/* The machine the planner predicts for (include/loom/plan.h): cluster.json read and written, and the rate
 * lookups the time model makes. The file is what `loom bench cluster` measures or a hand-written
 * description of a real cluster (docs/clusters/); docs/FORMATS.md describes it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/plan.h"

static const char *const kc_names[LOOM_KC_COUNT] = {"norm",    "activation", "elementwise", "embedding",
                                                    "loss",    "optimizer",  "copy",        "refill"};
/* the collectives' keys in a link (send/recv: "send"; a barrier is a latency alone) */
static const char *const coll_keys[LOOM_COLL_COUNT] = {"all_reduce", "reduce_scatter", "all_gather", "broadcast",
                                                       "send", "barrier"};
static const char *const prec_names[3] = {"fp32", "bf16", "fp16"};

const char *loom_kernel_class_name(loom_kernel_class k) {
    return k >= 0 && k < LOOM_KC_COUNT ? kc_names[k] : "?";
}

/* ---- reading ---- */

static double num(const loom_json *o, const char *key, double dflt) {
    const loom_json *v = loom_json_get(o, key);
    return v && v->type == LOOM_JSON_NUMBER ? v->number : dflt;
}

static void str(const loom_json *o, const char *key, char *dst, size_t n) {
    const loom_json *v = loom_json_get(o, key);
    if (v && v->type == LOOM_JSON_STRING) snprintf(dst, n, "%s", v->string);
}

static int prec_of(const char *s) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, prec_names[i])) return i;
    return -1;
}

/* an array of `n` numbers into v; 0 when the element is not one */
static int numbers(const loom_json *a, double *v, size_t n) {
    if (!a || a->type != LOOM_JSON_ARRAY || a->n_children != n) return 0;
    size_t i = 0;
    for (const loom_json *e = a->child; e; e = e->next, i++) {
        if (e->type != LOOM_JSON_NUMBER || !isfinite(e->number)) return 0;
        v[i] = e->number;
    }
    return 1;
}

static loom_status read_compute(const loom_json *o, const char *origin, int idx, loom_cluster_compute *k) {
    memset(k, 0, sizeof *k);
    LOOM_CHECK(o->type == LOOM_JSON_OBJECT, LOOM_ERR_FORMAT, "%s: compute[%d] must be an object", origin, idx);
    k->threads = (int)num(o, "threads", 0);
    char p[16] = "fp32";
    str(o, "precision", p, sizeof p);
    k->precision = prec_of(p);
    LOOM_CHECK(k->precision >= 0 && k->threads >= 0, LOOM_ERR_FORMAT,
               "%s: compute[%d]: precision must be fp32, bf16 or fp16 and threads >= 0", origin, idx);
    const loom_json *g = loom_json_get(o, "gemm");
    LOOM_CHECK(g && g->type == LOOM_JSON_ARRAY && g->n_children >= 1 && g->n_children <= LOOM_CLUSTER_MAX_GEMM,
               LOOM_ERR_FORMAT, "%s: compute[%d].gemm must list 1 to %d [M, N, K, trans, GFLOP/s]", origin, idx,
               LOOM_CLUSTER_MAX_GEMM);
    for (const loom_json *e = g->child; e; e = e->next) {
        double v[5];
        LOOM_CHECK(numbers(e, v, 5) && v[0] >= 1 && v[1] >= 1 && v[2] >= 1 && v[3] >= 0 && v[3] <= 2 && v[4] > 0,
                   LOOM_ERR_FORMAT, "%s: compute[%d].gemm[%d] must be [M, N, K, trans 0-2, GFLOP/s > 0]", origin,
                   idx, k->n_gemm);
        k->gemm[k->n_gemm++] = (loom_gemm_rate){(int64_t)v[0], (int64_t)v[1], (int64_t)v[2], (int)v[3], v[4],
                                                {log(v[0]), log(v[1]), log(v[2])}, log(v[4])};
    }
    const loom_json *at = loom_json_get(o, "attention");
    LOOM_CHECK(at && at->type == LOOM_JSON_ARRAY && at->n_children >= 1 && at->n_children <= LOOM_CLUSTER_MAX_ATTN,
               LOOM_ERR_FORMAT, "%s: compute[%d].attention must list 1 to %d [T, forward GFLOP/s, backward GFLOP/s]",
               origin, idx, LOOM_CLUSTER_MAX_ATTN);
    for (const loom_json *e = at->child; e; e = e->next) {
        double v[3];
        LOOM_CHECK(numbers(e, v, 3) && v[0] >= 1 && v[1] > 0 && v[2] > 0 &&
                       (k->n_attn == 0 || (int64_t)v[0] > k->attn_T[k->n_attn - 1]),
                   LOOM_ERR_FORMAT, "%s: compute[%d].attention[%d] must be [T, GFLOP/s, GFLOP/s], T ascending",
                   origin, idx, k->n_attn);
        k->attn_T[k->n_attn] = (int64_t)v[0];
        k->attn_fwd_gflops[k->n_attn] = v[1];
        k->attn_bwd_gflops[k->n_attn++] = v[2];
    }
    const loom_json *ns = loom_json_get(o, "ns_per_element");
    LOOM_CHECK(ns && ns->type == LOOM_JSON_OBJECT, LOOM_ERR_FORMAT, "%s: compute[%d].ns_per_element is missing",
               origin, idx);
    for (int c = 0; c < LOOM_KC_COUNT; c++) {
        /* refill (pages given back and written again, ZeRO-2/3) came later: absent, nothing is priced */
        k->ns_per_element[c] = num(ns, kc_names[c], c == LOOM_KC_REFILL ? 0 : -1);
        LOOM_CHECK(k->ns_per_element[c] >= 0, LOOM_ERR_FORMAT, "%s: compute[%d].ns_per_element.%s must be >= 0",
                   origin, idx, kc_names[c]);
    }
    return LOOM_OK;
}

static loom_status read_link(const loom_json *o, const char *origin, int idx, loom_cluster_link *l) {
    memset(l, 0, sizeof *l);
    LOOM_CHECK(o->type == LOOM_JSON_OBJECT, LOOM_ERR_FORMAT, "%s: links[%d] must be an object", origin, idx);
    l->ranks = (int)num(o, "ranks", 0);
    const loom_json *x = loom_json_get(o, "cross_host");
    l->cross_host = x && x->type == LOOM_JSON_BOOL && x->boolean;
    LOOM_CHECK(l->ranks >= 2, LOOM_ERR_FORMAT, "%s: links[%d].ranks must be >= 2", origin, idx);
    int any = 0;
    for (int c = 0; c < LOOM_COLL_COUNT; c++) {
        const loom_json *e = loom_json_get(o, coll_keys[c]);
        if (!e) continue;
        double v[2];
        LOOM_CHECK(numbers(e, v, 2) && v[0] >= 0 && v[1] >= 0, LOOM_ERR_FORMAT,
                   "%s: links[%d].%s must be [latency us, bus bandwidth GB/s]", origin, idx, coll_keys[c]);
        l->latency_s[c] = v[0] * 1e-6;
        l->busbw[c] = v[1] * 1e9;
        any |= c == LOOM_COLL_ALLREDUCE && v[1] > 0;
    }
    LOOM_CHECK(any, LOOM_ERR_FORMAT, "%s: links[%d] needs all_reduce (the others default to it)", origin, idx);
    return LOOM_OK;
}

loom_status loom_cluster_from_json(const loom_json *j, const char *origin, loom_cluster *c) {
    memset(c, 0, sizeof *c);
    LOOM_CHECK(j && j->type == LOOM_JSON_OBJECT, LOOM_ERR_FORMAT, "%s: a cluster description is a JSON object",
               origin);
    char fmt[32] = "";
    str(j, "format", fmt, sizeof fmt);
    LOOM_CHECK(!strcmp(fmt, "loom-cluster") && num(j, "version", 0) == 1, LOOM_ERR_FORMAT,
               "%s: not a loom cluster description (format \"loom-cluster\", version 1)", origin);
    str(j, "name", c->name, sizeof c->name);
    str(j, "source", c->source, sizeof c->source);
    str(j, "device", c->device, sizeof c->device);
    const loom_json *g = loom_json_get(j, "gpu");
    c->gpu = g && g->type == LOOM_JSON_BOOL && g->boolean;
    c->hosts = (int)num(j, "hosts", 1);
    c->cores_per_host = (int)num(j, "cores_per_host", 0);
    c->memory_per_rank = (int64_t)num(j, "memory_per_rank_bytes", 0);
    LOOM_CHECK(c->hosts >= 1 && c->cores_per_host >= 1, LOOM_ERR_FORMAT,
               "%s: hosts and cores_per_host must be >= 1", origin);
    const loom_json *pk = loom_json_get(j, "peak_gflops");
    for (int p = 0; p < 3; p++) c->peak_gflops[p] = pk ? num(pk, prec_names[p], 0) : 0;
    const loom_json *cs = loom_json_get(j, "compute");
    LOOM_CHECK(cs && cs->type == LOOM_JSON_ARRAY && cs->n_children >= 1 && cs->n_children <= LOOM_CLUSTER_MAX_COMPUTE,
               LOOM_ERR_FORMAT, "%s: compute must list 1 to %d entries", origin, LOOM_CLUSTER_MAX_COMPUTE);
    for (const loom_json *e = cs->child; e; e = e->next, c->n_compute++)
        LOOM_CALL(read_compute(e, origin, c->n_compute, &c->compute[c->n_compute]));
    const loom_json *ls = loom_json_get(j, "links");
    LOOM_CHECK(!ls || (ls->type == LOOM_JSON_ARRAY && ls->n_children <= LOOM_CLUSTER_MAX_LINKS), LOOM_ERR_FORMAT,
               "%s: links must list at most %d entries", origin, LOOM_CLUSTER_MAX_LINKS);
    for (const loom_json *e = ls ? ls->child : NULL; e; e = e->next, c->n_links++)
        LOOM_CALL(read_link(e, origin, c->n_links, &c->links[c->n_links]));
    const loom_json *d = loom_json_get(j, "disk");
    c->disk_read_bps = d ? num(d, "read_GBps", 0) * 1e9 : 0;
    c->disk_write_bps = d ? num(d, "write_GBps", 0) * 1e9 : 0;
    LOOM_CHECK(c->peak_gflops[0] > 0, LOOM_ERR_FORMAT, "%s: peak_gflops.fp32 must be > 0", origin);
    return LOOM_OK;
}

loom_status loom_cluster_load(const char *path, loom_cluster *out) {
    loom_json *j = NULL;
    LOOM_CALL(loom_json_parse_file(path, &j));
    const loom_status st = loom_cluster_from_json(j, path, out);
    loom_json_free(&j);
    return st;
}

/* ---- writing ---- */

void loom_cluster_to_json(const loom_cluster *c, loom_strbuf *sb) {
    loom_strbuf_printf(sb, "{\n  \"format\": \"loom-cluster\", \"version\": 1,\n  \"name\": ");
    loom_json_write_string(sb, c->name);
    loom_strbuf_printf(sb, ", \"source\": ");
    loom_json_write_string(sb, c->source);
    loom_strbuf_printf(sb, ", \"device\": ");
    loom_json_write_string(sb, c->device);
    loom_strbuf_printf(sb, ",\n  \"gpu\": %s, \"hosts\": %d, \"cores_per_host\": %d, \"memory_per_rank_bytes\": %lld,\n",
                       c->gpu ? "true" : "false", c->hosts, c->cores_per_host, (long long)c->memory_per_rank);
    loom_strbuf_printf(sb, "  \"peak_gflops\": {\"fp32\": %.1f, \"bf16\": %.1f, \"fp16\": %.1f},\n  \"compute\": [",
                       c->peak_gflops[0], c->peak_gflops[1], c->peak_gflops[2]);
    for (int i = 0; i < c->n_compute; i++) {
        const loom_cluster_compute *k = &c->compute[i];
        loom_strbuf_printf(sb, "%s\n    {\"threads\": %d, \"precision\": \"%s\",\n     \"gemm\": [", i ? "," : "",
                           k->threads, prec_names[k->precision]);
        for (int g = 0; g < k->n_gemm; g++)
            loom_strbuf_printf(sb, "%s[%lld, %lld, %lld, %d, %.2f]", g ? (g % 4 ? ", " : ",\n              ") : "",
                               (long long)k->gemm[g].M, (long long)k->gemm[g].N, (long long)k->gemm[g].K,
                               k->gemm[g].trans, k->gemm[g].gflops);
        loom_strbuf_printf(sb, "],\n     \"attention\": [");
        for (int a = 0; a < k->n_attn; a++)
            loom_strbuf_printf(sb, "%s[%lld, %.2f, %.2f]", a ? ", " : "", (long long)k->attn_T[a],
                               k->attn_fwd_gflops[a], k->attn_bwd_gflops[a]);
        loom_strbuf_printf(sb, "],\n     \"ns_per_element\": {");
        for (int e = 0; e < LOOM_KC_COUNT; e++)
            loom_strbuf_printf(sb, "%s\"%s\": %.4f", e ? ", " : "", kc_names[e], k->ns_per_element[e]);
        loom_strbuf_printf(sb, "}}");
    }
    loom_strbuf_printf(sb, "\n  ],\n  \"links\": [");
    for (int i = 0; i < c->n_links; i++) {
        const loom_cluster_link *l = &c->links[i];
        loom_strbuf_printf(sb, "%s\n    {\"ranks\": %d, \"cross_host\": %s", i ? "," : "", l->ranks,
                           l->cross_host ? "true" : "false");
        for (int k = 0; k < LOOM_COLL_COUNT; k++)
            if (l->busbw[k] > 0 || l->latency_s[k] > 0)
                loom_strbuf_printf(sb, ", \"%s\": [%.2f, %.3f]", coll_keys[k], l->latency_s[k] * 1e6, l->busbw[k] / 1e9);
        loom_strbuf_printf(sb, "}");
    }
    loom_strbuf_printf(sb, "\n  ],\n  \"disk\": {\"read_GBps\": %.3f, \"write_GBps\": %.3f}\n}\n", c->disk_read_bps / 1e9,
                       c->disk_write_bps / 1e9);
}

/* ---- lookups ---- */

/* the entry for `threads` in precision p (fp16 runs on fp32's units; a precision not described: fp32's) */
static const loom_cluster_compute *compute_of(const loom_cluster *c, int threads, int p) {
    if (p == 2) p = 0;
    const loom_cluster_compute *best = NULL;
    for (int pass = 0; pass < 2 && !best; pass++, p = 0)
        for (int i = 0; i < c->n_compute; i++) {
            const loom_cluster_compute *k = &c->compute[i];
            if (k->precision != p) continue;
            if (!best || abs(k->threads - threads) < abs(best->threads - threads)) best = k;
        }
    return best ? best : &c->compute[0];
}

/* Threads beyond the measured ones scale the rate (a rank never gets more cores than it asks for). */
static double thread_scale(const loom_cluster_compute *k, int threads) {
    return k->threads > 0 && threads > k->threads ? (double)threads / k->threads : 1.0;
}

double loom_cluster_gemm_seconds(const loom_cluster *c, int threads, int precision, int trans, int64_t M, int64_t N,
                                 int64_t K) {
    if (M <= 0 || N <= 0 || K <= 0) return 0.0;
    const loom_cluster_compute *k = compute_of(c, threads, precision);
    const double lm = log((double)M), ln = log((double)N), lk = log((double)K);
    double wsum = 0.0, lr = 0.0;
    for (int pass = 0; pass < 2 && wsum == 0.0; pass++)
        for (int i = 0; i < k->n_gemm; i++) {
            const loom_gemm_rate *g = &k->gemm[i];
            if (pass == 0 && g->trans != trans) continue; /* another orientation only when this one is missing */
            const double dm = lm - g->log_mnk[0], dn = ln - g->log_mnk[1], dk = lk - g->log_mnk[2];
            const double d2 = dm * dm + dn * dn + dk * dk;
            if (d2 < 1e-12) return 2.0 * M * N * K / (g->gflops * 1e9 * thread_scale(k, threads));
            const double w = 1.0 / (d2 * d2);
            wsum += w;
            lr += w * g->log_rate;
        }
    return 2.0 * (double)M * (double)N * (double)K / (exp(lr / wsum) * 1e9 * thread_scale(k, threads));
}

double loom_cluster_attention_seconds(const loom_cluster *c, int threads, int precision, int backward, double flops,
                                      int64_t T) {
    if (flops <= 0) return 0.0;
    const loom_cluster_compute *k = compute_of(c, threads, precision);
    const double *r = backward ? k->attn_bwd_gflops : k->attn_fwd_gflops;
    double rate = r[0];
    if (T >= k->attn_T[k->n_attn - 1]) rate = r[k->n_attn - 1];
    else
        for (int i = 0; i + 1 < k->n_attn; i++)
            if (T >= k->attn_T[i] && T < k->attn_T[i + 1]) { /* linear in log T */
                const double f = (log((double)T) - log((double)k->attn_T[i])) /
                                 (log((double)k->attn_T[i + 1]) - log((double)k->attn_T[i]));
                rate = r[i] + f * (r[i + 1] - r[i]);
            }
    return flops / (rate * 1e9 * thread_scale(k, threads));
}

double loom_cluster_kernel_seconds(const loom_cluster *c, int threads, int precision, loom_kernel_class kc,
                                   double elements) {
    const loom_cluster_compute *k = compute_of(c, threads, precision);
    return elements * k->ns_per_element[kc] * 1e-9 / thread_scale(k, threads);
}

/* the described link nearest to n ranks, within a host or across hosts (the other kind when none) */
static const loom_cluster_link *link_of(const loom_cluster *c, int n, int cross_host) {
    const loom_cluster_link *best = NULL;
    for (int pass = 0; pass < 2 && !best; pass++)
        for (int i = 0; i < c->n_links; i++) {
            const loom_cluster_link *l = &c->links[i];
            if (pass == 0 && l->cross_host != cross_host) continue;
            if (!best || abs(l->ranks - n) < abs(best->ranks - n)) best = l;
        }
    return best;
}

double loom_cluster_coll_seconds(const loom_cluster *c, loom_coll op, int n, int per_host, double bytes) {
    if (n <= 1) return 0.0;
    const int cross_host = per_host < n;
    const loom_cluster_link *best = link_of(c, n, cross_host);
    if (!best) return 0.0; /* no links described: communication unknown, counted free */
    const int k = best->busbw[op] > 0 ? (int)op : (int)LOOM_COLL_ALLREDUCE;
    double busbw = best->busbw[k];
    if (cross_host && best->cross_host && per_host > 1) { /* every member's NIC carries a ring */
        const loom_cluster_link *in = link_of(c, per_host, 0);
        const double cap = in && !in->cross_host ? in->busbw[in->busbw[op] > 0 ? op : LOOM_COLL_ALLREDUCE] : 0.0;
        busbw *= per_host;
        if (cap > 0 && busbw > cap) busbw = cap;
    }
    double factor = 1.0;
    if (op == LOOM_COLL_ALLREDUCE) factor = 2.0 * (n - 1) / n;
    else if (op == LOOM_COLL_ALLGATHER || op == LOOM_COLL_REDUCE_SCATTER) factor = (double)(n - 1) / n;
    else if (op == LOOM_COLL_BARRIER) factor = 0.0;
    const double lat = best->latency_s[op] > 0 || best->busbw[op] > 0 ? best->latency_s[op] : best->latency_s[k];
    return lat + factor * bytes / busbw;
}
