/* The serving engine (include/loom/serve.h): a block manager over the model's paged key/value pool, an
 * iteration-level scheduler (Orca's continuous batching, vLLM's preemption by recompute, Sarathi's chunked
 * prefill), sampling, and text out in whole characters with stop strings cut off. One thread owns the model;
 * submit, cancel and stats only touch the queues under the lock. */
#include "loom/serve.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "loom/log.h"

const double loom_engine_hist_bounds[LOOM_ENGINE_HIST] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                           0.5,   1.0,  2.5,   5.0,  10.0, 1e300};

loom_engine_config loom_engine_config_default(void) {
    return (loom_engine_config){.kv_blocks = 0, .block_len = 16, .max_seqs = 64, .max_batch_tokens = 512,
                                .max_queue = 1024, .prefix_cache = 1};
}

/* ---- blocks: reference counts, a free list in release order (least recently used first), and the hashes
 * of full blocks, so a new prompt can reuse a prefix another request computed ---- */

typedef struct {
    int64_t n;
    int32_t *ref, *prev, *next, *hnext, *buckets;
    uint64_t *hash; /* 0: not a full, registered block */
    int32_t head, tail;
    int64_t n_free, mask;
} block_set;

static int blocks_init(block_set *b, int64_t n) {
    memset(b, 0, sizeof *b);
    int64_t nb = 1;
    while (nb < 2 * n) nb *= 2;
    b->n = n;
    b->mask = nb - 1;
    b->ref = calloc((size_t)n, sizeof(int32_t));
    b->prev = malloc((size_t)n * sizeof(int32_t));
    b->next = malloc((size_t)n * sizeof(int32_t));
    b->hnext = malloc((size_t)n * sizeof(int32_t));
    b->hash = calloc((size_t)n, sizeof(uint64_t));
    b->buckets = malloc((size_t)nb * sizeof(int32_t));
    if (!b->ref || !b->prev || !b->next || !b->hnext || !b->hash || !b->buckets) return 0;
    for (int64_t i = 0; i < nb; i++) b->buckets[i] = -1;
    for (int64_t i = 0; i < n; i++) {
        b->prev[i] = (int32_t)i - 1;
        b->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    b->head = 0;
    b->tail = (int32_t)n - 1;
    b->n_free = n;
    return 1;
}

static void blocks_free(block_set *b) {
    free(b->ref);
    free(b->prev);
    free(b->next);
    free(b->hnext);
    free(b->hash);
    free(b->buckets);
}

static void unlink_free(block_set *b, int32_t i) {
    if (b->prev[i] >= 0) b->next[b->prev[i]] = b->next[i];
    else b->head = b->next[i];
    if (b->next[i] >= 0) b->prev[b->next[i]] = b->prev[i];
    else b->tail = b->prev[i];
    b->n_free--;
}

static void unhash(block_set *b, int32_t i) {
    int32_t *at = &b->buckets[b->hash[i] & (uint64_t)b->mask];
    while (*at != i) at = &b->hnext[*at];
    *at = b->hnext[i];
    b->hash[i] = 0;
}

/* a free block (the least recently used; a cached prefix block loses its hash), or -1 */
static int32_t block_alloc(block_set *b) {
    const int32_t i = b->head;
    if (i < 0) return -1;
    unlink_free(b, i);
    if (b->hash[i]) unhash(b, i);
    b->ref[i] = 1;
    return i;
}

static void block_release(block_set *b, int32_t i) {
    if (--b->ref[i] > 0) return;
    /* blocks without a hash are reused first; hashed ones wait at the tail as a prefix cache */
    if (!b->hash[i]) {
        b->prev[i] = -1;
        b->next[i] = b->head;
        if (b->head >= 0) b->prev[b->head] = i;
        else b->tail = i;
        b->head = i;
    } else {
        b->next[i] = -1;
        b->prev[i] = b->tail;
        if (b->tail >= 0) b->next[b->tail] = i;
        else b->head = i;
        b->tail = i;
    }
    b->n_free++;
}

/* the block registered under hash h, referenced once more; -1 if none */
static int32_t block_lookup(block_set *b, uint64_t h) {
    for (int32_t i = b->buckets[h & (uint64_t)b->mask]; i >= 0; i = b->hnext[i])
        if (b->hash[i] == h) {
            if (b->ref[i]++ == 0) unlink_free(b, i);
            return i;
        }
    return -1;
}

static void block_register(block_set *b, int32_t i, uint64_t h) {
    if (b->hash[i]) return;
    for (int32_t j = b->buckets[h & (uint64_t)b->mask]; j >= 0; j = b->hnext[j])
        if (b->hash[j] == h) return; /* the same prefix computed twice: one of them is enough */
    b->hash[i] = h;
    b->hnext[i] = b->buckets[h & (uint64_t)b->mask];
    b->buckets[h & (uint64_t)b->mask] = i;
}

/* the hash of a full block: its tokens chained after the hash of the blocks before it (FNV-1a, 64 bit) */
static uint64_t block_hash(uint64_t parent, const int32_t *t, int64_t n) {
    uint64_t h = parent ^ 0xcbf29ce484222325ull;
    for (int64_t i = 0; i < n; i++)
        for (int k = 0; k < 4; k++) {
            h ^= (uint64_t)(((uint32_t)t[i] >> (8 * k)) & 0xff);
            h *= 0x100000001b3ull;
        }
    return h ? h : 1;
}

/* ---- sequences ---- */

typedef struct seq {
    uint64_t id;
    loom_request req;
    char *stop_mem[LOOM_MAX_STOP];
    int64_t max_stop;
    int32_t *tokens; /* prompt, then generated */
    int64_t n_tokens, n_prompt, n_gen, cap;
    int32_t *table;  /* block table */
    int64_t n_blocks, n_cached;
    uint64_t *hashes; /* hash of each full block of tokens, as computed */
    int64_t n_hashed;
    loom_rng rng;
    char *text; /* generated bytes; text[0, sent) already sent */
    size_t text_len, text_cap, sent;
    double arrived, last_token;
    int cancelled;
    struct seq *next;
} seq;

struct loom_engine {
    loom_model *m;
    const loom_tokenizer *tok;
    loom_engine_config cfg;
    loom_kv_pool *pool;
    block_set blocks;
    int64_t V, ctx_len;
    float *logits, *scratch;
    uint8_t *seen;
    loom_kv_segment *segs;
    seq **seg_seq;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int stop, started;
    seq *waiting, *running; /* lists in arrival order; preempted sequences go back to the front */
    int64_t n_waiting, n_running;
    uint64_t next_id;
    loom_engine_stats stats;
};

static void seq_free(seq *s) {
    if (!s) return;
    for (int i = 0; i < LOOM_MAX_STOP; i++) free(s->stop_mem[i]);
    free(s->tokens);
    free(s->table);
    free(s->hashes);
    free(s->text);
    free(s);
}

static void hist_add(int64_t *count, double *sum, double x) {
    int i = 0;
    while (x > loom_engine_hist_bounds[i]) i++;
    count[i]++;
    *sum += x;
}

static void emit(loom_engine *e, seq *s, int finished, const char *reason, const char *error) {
    if (s->cancelled || !s->req.on_event) return;
    loom_engine_event ev = {.id = s->id, .text = s->text + s->sent, .text_len = 0, .finished = finished,
                            .finish_reason = reason, .error = error, .prompt_tokens = s->n_prompt,
                            .completion_tokens = s->n_gen};
    (void)e;
    size_t upto = s->text_len;
    if (!finished) {
        /* hold back what could still become a stop string, and an unfinished UTF-8 character */
        upto = s->text_len > (size_t)s->max_stop ? s->text_len - (size_t)s->max_stop : 0;
        if (upto < s->sent) upto = s->sent;
        size_t lead = upto;
        for (int back = 0; back < 4 && lead > s->sent; back++) {
            const unsigned char c = (unsigned char)s->text[lead - 1];
            if ((c & 0xC0) != 0x80) { /* the last character's first byte: is it complete? */
                const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
                if (upto - (lead - 1) < need && c >= 0xC0) upto = lead - 1;
                break;
            }
            lead--;
        }
        if (upto == s->sent) return;
    }
    ev.text_len = upto - s->sent;
    s->sent = upto;
    s->req.on_event(s->req.ctx, &ev);
}

/* releases a sequence's blocks (they stay findable by their hashes until reused) */
static void seq_release_blocks(loom_engine *e, seq *s) {
    for (int64_t i = 0; i < s->n_blocks; i++) block_release(&e->blocks, s->table[i]);
    s->n_blocks = 0;
    s->n_cached = 0;
}

/* hashes of the full blocks of tokens not yet hashed */
static void seq_hash(loom_engine *e, seq *s) {
    const int64_t bl = e->cfg.block_len;
    while ((s->n_hashed + 1) * bl <= s->n_tokens) {
        /* the first block's parent names the adapter set: another set's keys and values are other values */
        const uint64_t parent = s->n_hashed ? s->hashes[s->n_hashed - 1] : (uint64_t)s->req.adapter * 0x9e3779b97f4a7c15ull;
        s->hashes[s->n_hashed] = block_hash(parent, s->tokens + s->n_hashed * bl, bl);
        s->n_hashed++;
    }
}

/* Takes blocks for the sequence's tokens, reusing cached prefix blocks; 0 when too few are free. */
static int seq_admit(loom_engine *e, seq *s) {
    const int64_t bl = e->cfg.block_len, need = (s->n_tokens + bl - 1) / bl;
    int64_t hits = 0;
    if (e->cfg.prefix_cache) {
        seq_hash(e, s);
        const int64_t reusable = (s->n_tokens - 1) / bl; /* at least the last token is computed: its logits */
        e->stats.prefix_queries += reusable;
        while (hits < reusable) {
            const int32_t b = block_lookup(&e->blocks, s->hashes[hits]);
            if (b < 0) break;
            s->table[hits++] = b;
        }
    }
    s->n_blocks = hits;
    if (e->blocks.n_free < need - hits) {
        seq_release_blocks(e, s);
        if (e->cfg.prefix_cache) e->stats.prefix_queries -= (s->n_tokens - 1) / bl;
        return 0;
    }
    e->stats.prefix_hits += hits;
    while (s->n_blocks < need) s->table[s->n_blocks++] = block_alloc(&e->blocks);
    s->n_cached = hits * bl;
    return 1;
}

static void list_remove(seq **head, seq *s) {
    while (*head != s) head = &(*head)->next;
    *head = s->next;
    s->next = NULL;
}

static void list_append(seq **head, seq *s) {
    while (*head) head = &(*head)->next;
    s->next = NULL;
    *head = s;
}

static void finish(loom_engine *e, seq *s, const char *reason, const char *error) {
    emit(e, s, 1, reason, error);
    list_remove(&e->running, s);
    e->n_running--;
    seq_release_blocks(e, s);
    seq_free(s);
}

/* the newest running sequence gives its blocks back and waits at the front of the queue, to be recomputed */
static void preempt_newest(loom_engine *e) {
    seq *s = e->running;
    while (s->next) s = s->next;
    list_remove(&e->running, s);
    e->n_running--;
    seq_release_blocks(e, s);
    s->next = e->waiting;
    e->waiting = s;
    e->n_waiting++;
    e->stats.preemptions++;
}

/* Appends the sampled token; returns a finish reason when the sequence is done, else NULL. */
static const char *accept_token(loom_engine *e, seq *s, int32_t t) {
    const loom_sample_config *sc = &s->req.sample;
    e->stats.generation_tokens++;
    const double now = loom_now_s();
    if (s->n_gen == 0) hist_add(e->stats.ttft_count, &e->stats.ttft_sum, now - s->arrived);
    else hist_add(e->stats.itl_count, &e->stats.itl_sum, now - s->last_token);
    s->last_token = now;
    s->n_gen++;
    if (sc->stop_at_eot && t == loom_tokenizer_eot(e->tok)) return "stop";
    s->tokens[s->n_tokens++] = t;
    size_t len = 0;
    const char *b = loom_tokenizer_token_bytes(e->tok, t, &len);
    if (s->text_len + len + 1 > s->text_cap) {
        size_t cap = 2 * (s->text_len + len + 1) + 64;
        char *nt = realloc(s->text, cap);
        if (!nt) return "error";
        s->text = nt;
        s->text_cap = cap;
    }
    if (len) memcpy(s->text + s->text_len, b, len);
    s->text_len += len;
    s->text[s->text_len] = 0;
    /* a stop string ends the text where it begins (searched where the new bytes could complete one) */
    for (int i = 0; i < LOOM_MAX_STOP && s->stop_mem[i]; i++) {
        const size_t n = strlen(s->stop_mem[i]);
        size_t from = s->text_len - len >= n ? s->text_len - len - n + 1 : 0;
        if (from < s->sent) from = s->sent;
        for (size_t at = from; at + n <= s->text_len; at++)
            if (!memcmp(s->text + at, s->stop_mem[i], n)) {
                s->text_len = at;
                return "stop";
            }
    }
    if (s->n_gen >= sc->max_tokens || s->n_tokens >= e->ctx_len) return "length";
    return NULL;
}

static int32_t sample(loom_engine *e, seq *s, float *logits) {
    const loom_request *r = &s->req;
    if (r->presence_penalty != 0 || r->frequency_penalty != 0) {
        const int32_t *gen = s->tokens + s->n_prompt;
        const int64_t n = s->n_tokens - s->n_prompt;
        for (int64_t i = 0; i < n; i++) {
            logits[gen[i]] -= (float)r->frequency_penalty;
            if (!e->seen[gen[i]]) logits[gen[i]] -= (float)r->presence_penalty;
            e->seen[gen[i]] = 1;
        }
        for (int64_t i = 0; i < n; i++) e->seen[gen[i]] = 0;
    }
    return loom_sample_token(logits, e->V, &r->sample, &s->rng, e->scratch);
}

/* One iteration: admit, build the batch (decodes first, then prefill chunks), one forward, sample.
 * Called with the lock held; the forward runs without it. */
static void step(loom_engine *e) {
    const int64_t bl = e->cfg.block_len;
    for (seq **at = &e->waiting; *at;) { /* dropped by their clients before they ran */
        seq *s = *at;
        if (!s->cancelled) {
            at = &s->next;
            continue;
        }
        *at = s->next;
        e->n_waiting--;
        seq_free(s);
    }
    while (e->waiting && e->n_running < e->cfg.max_seqs) {
        seq *s = e->waiting;
        if (!seq_admit(e, s)) break; /* first come, first served: nobody overtakes the head */
        e->waiting = s->next;
        e->n_waiting--;
        list_append(&e->running, s);
        e->n_running++;
    }
    for (seq *s = e->running, *nx; s; s = nx) { /* dropped by their clients */
        nx = s->next;
        if (s->cancelled) finish(e, s, "error", "cancelled");
    }
    int64_t n_segs = 0, budget = e->cfg.max_batch_tokens;
    for (int pass = 0; pass < 2; pass++)
        for (seq *s = e->running; s && budget > 0; s = s->next) {
            const int64_t pending = s->n_tokens - s->n_cached;
            if ((pass == 0) != (pending == 1)) continue; /* decodes first */
            const int64_t n = pending < budget ? pending : budget;
            /* the blocks for positions up to n_cached + n: a decode may need a new one */
            int lost_self = 0;
            while ((s->n_cached + n + bl - 1) / bl > s->n_blocks) {
                const int32_t b = block_alloc(&e->blocks);
                if (b >= 0) {
                    s->table[s->n_blocks++] = b;
                    continue;
                }
                seq *last = e->running;
                while (last->next) last = last->next;
                lost_self = last == s;
                for (int64_t k = 0; k < n_segs; k++) /* a preempted sequence leaves this step's batch */
                    if (e->seg_seq[k] == last) {
                        budget += e->segs[k].n;
                        memmove(e->segs + k, e->segs + k + 1, (size_t)(n_segs - k - 1) * sizeof *e->segs);
                        memmove(e->seg_seq + k, e->seg_seq + k + 1, (size_t)(n_segs - k - 1) * sizeof *e->seg_seq);
                        n_segs--;
                        break;
                    }
                preempt_newest(e);
                if (lost_self) break;
            }
            if (lost_self) break;
            e->segs[n_segs] = (loom_kv_segment){.tokens = s->tokens + s->n_cached, .n = n, .pos = s->n_cached,
                                                .blocks = s->table, .logits = s->n_cached + n == s->n_tokens,
                                                .adapter = s->req.adapter};
            e->seg_seq[n_segs++] = s;
            budget -= n;
        }
    if (n_segs == 0) return;
    e->stats.steps++;
    pthread_mutex_unlock(&e->lock);
    loom_status st = loom_model_kv_forward(e->m, e->pool, e->segs, n_segs, e->logits);
    pthread_mutex_lock(&e->lock);
    const char *err = st == LOOM_OK ? NULL : loom_error_message();
    if (err) LOOM_ERROR("serve: a step failed: %s", err);
    int64_t row = 0;
    for (int64_t k = 0; k < n_segs; k++) {
        seq *s = e->seg_seq[k];
        if (err) {
            finish(e, s, "error", err);
            continue;
        }
        s->n_cached += e->segs[k].n;
        if (e->cfg.prefix_cache) { /* the blocks this step filled become findable */
            seq_hash(e, s);
            for (int64_t i = 0; i < s->n_cached / bl; i++) block_register(&e->blocks, s->table[i], s->hashes[i]);
        }
        if (!e->segs[k].logits) continue;
        float *lg = e->logits + row++ * e->V;
        if (s->cancelled) continue; /* finished at the next step */
        const char *reason = accept_token(e, s, sample(e, s, lg));
        if (reason) finish(e, s, reason, NULL);
        else emit(e, s, 0, NULL, NULL);
    }
}

static void *engine_main(void *arg) {
    loom_engine *e = arg;
    pthread_mutex_lock(&e->lock);
    while (!e->stop) {
        if (!e->waiting && !e->running) {
            pthread_cond_wait(&e->wake, &e->lock);
            continue;
        }
        step(e);
    }
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

loom_status loom_engine_create(loom_model *m, const loom_tokenizer *tok, const loom_engine_config *cfg,
                               loom_engine **out) {
    *out = NULL;
    const loom_model_config *mc = loom_model_get_config(m);
    LOOM_CHECK(cfg->block_len >= 1 && cfg->kv_blocks >= 1 && cfg->max_seqs >= 1 && cfg->max_batch_tokens >= 1 &&
               cfg->max_queue >= 1, LOOM_ERR_INVALID_ARG,
               "serving needs at least one block, sequence, batch token and queue place");
    LOOM_CHECK(cfg->kv_blocks * cfg->block_len >= mc->max_seq_len, LOOM_ERR_INVALID_ARG,
               "the key/value pool holds %lld positions, less than one full context (%lld): give it more memory",
               (long long)(cfg->kv_blocks * cfg->block_len), (long long)mc->max_seq_len);
    loom_engine *e = calloc(1, sizeof *e);
    LOOM_CHECK(e != NULL, LOOM_ERR_NOMEM, "out of memory");
    e->m = m;
    e->tok = tok;
    e->cfg = *cfg;
    e->V = mc->vocab_size;
    e->ctx_len = mc->max_seq_len;
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->wake, NULL);
    loom_status st = LOOM_OK;
    e->logits = malloc((size_t)(cfg->max_seqs * e->V) * sizeof(float));
    e->scratch = malloc((size_t)(2 * e->V) * sizeof(float));
    e->seen = calloc((size_t)e->V, 1);
    e->segs = malloc((size_t)cfg->max_seqs * sizeof *e->segs);
    e->seg_seq = malloc((size_t)cfg->max_seqs * sizeof *e->seg_seq);
    if (!e->logits || !e->scratch || !e->seen || !e->segs || !e->seg_seq || !blocks_init(&e->blocks, cfg->kv_blocks))
        st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    if (st == LOOM_OK) st = loom_kv_pool_create(m, cfg->kv_blocks, cfg->block_len, cfg->kv_bf16, &e->pool);
    if (st == LOOM_OK) st = loom_model_reserve(m, cfg->max_batch_tokens, 1, LOOM_RECOMPUTE_NONE);
    /* from here on the engine's thread runs every kernel: this thread's idle pool goes (see the function) */
    if (st == LOOM_OK) loom_backend_release_threads(loom_model_backend(m));
    if (st == LOOM_OK && pthread_create(&e->thread, NULL, engine_main, e) != 0)
        st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "cannot start the engine's thread");
    if (st != LOOM_OK) {
        loom_error_trace(__FILE__, __LINE__, __func__);
        loom_engine_free(&e);
        return st;
    }
    e->started = 1;
    *out = e;
    return LOOM_OK;
}

void loom_engine_free(loom_engine **pe) {
    loom_engine *e = *pe;
    if (!e) return;
    if (e->started) {
        pthread_mutex_lock(&e->lock);
        e->stop = 1;
        pthread_cond_signal(&e->wake);
        pthread_mutex_unlock(&e->lock);
        pthread_join(e->thread, NULL);
    }
    while (e->running) finish(e, e->running, "error", "the server is shutting down");
    for (seq *s = e->waiting, *nx; s; s = nx) {
        nx = s->next;
        emit(e, s, 1, "error", "the server is shutting down");
        seq_free(s);
    }
    loom_kv_pool_free(&e->pool);
    blocks_free(&e->blocks);
    free(e->logits);
    free(e->scratch);
    free(e->seen);
    free(e->segs);
    free(e->seg_seq);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->wake);
    free(e);
    *pe = NULL;
}

loom_status loom_engine_submit(loom_engine *e, const loom_request *r, uint64_t *id) {
    const loom_sample_config *sc = &r->sample;
    LOOM_CHECK(r->n_prompt >= 1, LOOM_ERR_INVALID_ARG, "the prompt is empty");
    LOOM_CHECK(r->adapter >= 0 && r->adapter <= loom_model_num_adapter_sets(e->m), LOOM_ERR_INVALID_ARG,
               "adapter set %d, the model has %d", r->adapter, loom_model_num_adapter_sets(e->m));
    LOOM_CHECK(r->n_prompt < e->ctx_len, LOOM_ERR_INVALID_ARG,
               "the prompt has %lld tokens; the model's context is %lld", (long long)r->n_prompt, (long long)e->ctx_len);
    LOOM_CHECK(sc->max_tokens >= 1 && sc->top_k >= 0 && sc->top_p > 0 && sc->top_p <= 1 && sc->temperature >= 0,
               LOOM_ERR_INVALID_ARG, "bad sampling settings: need max_tokens >= 1, temperature >= 0, top_k >= 0, "
               "0 < top_p <= 1");
    for (int64_t i = 0; i < r->n_prompt; i++)
        LOOM_CHECK(r->prompt[i] >= 0 && r->prompt[i] < e->V, LOOM_ERR_INVALID_ARG,
                   "prompt token %d is outside the vocabulary [0, %lld)", r->prompt[i], (long long)e->V);
    seq *s = calloc(1, sizeof *s);
    LOOM_CHECK(s != NULL, LOOM_ERR_NOMEM, "out of memory");
    s->req = *r;
    s->req.prompt = NULL;
    s->cap = e->ctx_len;
    s->tokens = malloc((size_t)s->cap * sizeof(int32_t));
    s->table = malloc((size_t)((s->cap + e->cfg.block_len - 1) / e->cfg.block_len) * sizeof(int32_t));
    s->hashes = malloc((size_t)(s->cap / e->cfg.block_len + 1) * sizeof(uint64_t));
    int ok = s->tokens && s->table && s->hashes;
    for (int i = 0; ok && i < LOOM_MAX_STOP && r->stop[i]; i++) {
        ok = r->stop[i][0] && (s->stop_mem[i] = strdup(r->stop[i])) != NULL;
        s->req.stop[i] = s->stop_mem[i];
        const int64_t n = (int64_t)strlen(r->stop[i]);
        if (n > s->max_stop) s->max_stop = n;
    }
    if (!ok) {
        seq_free(s);
        return loom_error_set(LOOM_ERR_INVALID_ARG, __FILE__, __LINE__, __func__, "out of memory, or an empty stop string");
    }
    memcpy(s->tokens, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    s->n_tokens = s->n_prompt = r->n_prompt;
    loom_rng_seed(&s->rng, sc->seed);
    s->arrived = loom_now_s();
    pthread_mutex_lock(&e->lock);
    if (e->n_waiting >= e->cfg.max_queue) {
        pthread_mutex_unlock(&e->lock);
        seq_free(s);
        return loom_error_set(LOOM_ERR_UNSUPPORTED, __FILE__, __LINE__, __func__, "the queue is full (%lld waiting)",
                              (long long)e->cfg.max_queue);
    }
    s->id = ++e->next_id;
    *id = s->id;
    list_append(&e->waiting, s);
    e->n_waiting++;
    e->stats.requests++;
    e->stats.prompt_tokens += r->n_prompt;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
    return LOOM_OK;
}

void loom_engine_cancel(loom_engine *e, uint64_t id) {
    pthread_mutex_lock(&e->lock);
    for (int list = 0; list < 2; list++)
        for (seq *s = list ? e->running : e->waiting; s; s = s->next)
            if (s->id == id) s->cancelled = 1;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
}

int64_t loom_engine_context(const loom_engine *e) { return e->ctx_len; }

void loom_engine_cancel_all(loom_engine *e) {
    pthread_mutex_lock(&e->lock);
    for (int list = 0; list < 2; list++)
        for (seq *s = list ? e->running : e->waiting; s; s = s->next) s->cancelled = 1;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
}

void loom_engine_get_stats(loom_engine *e, loom_engine_stats *st) {
    pthread_mutex_lock(&e->lock);
    *st = e->stats;
    st->queue_depth = e->n_waiting;
    st->running = e->n_running;
    st->kv_blocks_free = e->blocks.n_free;
    st->kv_blocks_used = e->blocks.n - e->blocks.n_free;
    pthread_mutex_unlock(&e->lock);
}
