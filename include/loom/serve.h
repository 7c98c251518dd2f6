/* loom/serve.h: the serving engine (continuous batching over a paged key/value cache) and the HTTP server
 * in front of it (`loom serve`, OpenAI's API).
 *
 *   loom_engine *e;
 *   loom_engine_config ec = loom_engine_config_default();
 *   LOOM_CALL(loom_engine_create(model, tok, &ec, &e));          // starts the engine's thread
 *   loom_request r = {.prompt = ids, .n_prompt = n, .sample = sc, .on_event = cb, .ctx = me};
 *   uint64_t id;
 *   LOOM_CALL(loom_engine_submit(e, &r, &id));                     // cb(ctx, &event) from the engine's thread
 *   ...
 *   loom_engine_free(&e);
 *
 * Every step the scheduler admits waiting requests in arrival order while blocks and sequence slots last
 * (reusing the blocks of a prompt prefix it has seen: automatic prefix caching), then runs one forward over
 * the running sequences: one decode row for each generating sequence, and prefill chunks from the rest of
 * the step's token budget, so a long prompt never stalls the others. When the pool runs out of blocks the
 * newest running sequence is preempted: its blocks freed, its text so far recomputed when it is admitted
 * again. Text is produced in whole UTF-8 characters, and stop strings are cut off before they are sent. */
#ifndef LOOM_SERVE_H
#define LOOM_SERVE_H
#include <stdint.h>

#include "loom/generate.h"
#include "loom/model.h"
#include "loom/tokenizer.h"

typedef struct {
    int64_t kv_blocks;        /* blocks in the pool */
    int64_t block_len;        /* positions per block */
    int64_t max_seqs;         /* sequences running at once */
    int64_t max_batch_tokens; /* rows in one step's forward (decodes + prefill chunks) */
    int64_t max_queue;        /* waiting requests; loom_engine_submit refuses more */
    int prefix_cache;         /* share blocks between requests with a common prompt prefix */
    int kv_bf16;              /* keys and values stored as bf16 */
} loom_engine_config;

loom_engine_config loom_engine_config_default(void);

typedef struct {
    uint64_t id;
    const char *text; /* new text (whole UTF-8 characters; stop strings removed), text_len bytes; may be empty */
    size_t text_len;
    int finished;                    /* last event of the request */
    const char *finish_reason;       /* "stop", "length", or "error" (message in error) */
    const char *error;
    int64_t prompt_tokens, completion_tokens;
} loom_engine_event;

typedef void (*loom_engine_callback)(void *ctx, const loom_engine_event *ev);

#define LOOM_MAX_STOP 4
typedef struct {
    const int32_t *prompt; /* copied */
    int64_t n_prompt;
    loom_sample_config sample; /* temperature, top_k, top_p, seed, max_tokens, stop_at_eot */
    double presence_penalty, frequency_penalty; /* over the generated tokens, as OpenAI's */
    const char *stop[LOOM_MAX_STOP];            /* stop strings (copied), NULL-terminated if fewer */
    loom_engine_callback on_event;              /* called from the engine's thread */
    void *ctx;
    int adapter;                                /* 0: the model; k: its k-th LoRA adapter set */
} loom_request;

typedef struct {
    int64_t requests, prompt_tokens, generation_tokens, queue_depth, running, preemptions;
    int64_t kv_blocks_used, kv_blocks_free, prefix_queries, prefix_hits; /* prefix: blocks looked up / reused */
    int64_t steps;
#define LOOM_ENGINE_HIST 12
    int64_t ttft_count[LOOM_ENGINE_HIST], itl_count[LOOM_ENGINE_HIST]; /* per bucket (not cumulative) */
    double ttft_sum, itl_sum;
} loom_engine_stats;

extern const double loom_engine_hist_bounds[LOOM_ENGINE_HIST]; /* seconds; the last is +Inf */

typedef struct loom_engine loom_engine;

/* The engine serves `m` (an inference model on one rank) with tokenizer `tok` (both borrowed). */
LOOM_NODISCARD loom_status loom_engine_create(loom_model *m, const loom_tokenizer *tok, const loom_engine_config *cfg,
                                              loom_engine **out);
/* Stops the engine's thread; requests still open get a finished event with reason "error". */
void loom_engine_free(loom_engine **e);
/* Queues a request (thread-safe). LOOM_ERR_INVALID_ARG for a request the engine can never run (a prompt
 * longer than the context, a token outside the vocabulary), LOOM_ERR_UNSUPPORTED when the queue is full. */
LOOM_NODISCARD loom_status loom_engine_submit(loom_engine *e, const loom_request *r, uint64_t *id);
/* Drops a request (thread-safe; its callback is not called again). Unknown ids are ignored. */
void loom_engine_cancel(loom_engine *e, uint64_t id);
void loom_engine_cancel_all(loom_engine *e);
int64_t loom_engine_context(const loom_engine *e); /* positions a sequence may have */
void loom_engine_get_stats(loom_engine *e, loom_engine_stats *s);

/* The HTTP server (libevent's evhttp): OpenAI's /v1/completions, /v1/chat/completions (JSON, or Server-Sent
 * Events with stream: true), /v1/models, and /health and Prometheus /metrics. */
typedef struct {
    const char *host;          /* 127.0.0.1 */
    int port;                  /* 0: any free port */
    const char *api_key;       /* NULL: no key needed; else "Authorization: Bearer KEY" */
    const char *model_name;    /* what /v1/models lists and requests may name (also "base") */
    const char *const *adapter_names; /* n_adapters names of the model's LoRA adapter sets, 1..n in order:
                                         a request's "model" chooses one (listed by /v1/models too) */
    int n_adapters;
    const char *chat_template; /* plain, chatml, llama3 */
    size_t max_body;           /* bytes; larger requests get 413 */
    int timeout_s;             /* a request must arrive within it (slow clients are closed) */
} loom_server_config;

/* Serves until SIGINT or SIGTERM; prints "loom serve: listening on http://HOST:PORT (model NAME)" to stderr
 * once listening. LOOM_ERR_UNSUPPORTED when loom was built without libevent. */
LOOM_NODISCARD loom_status loom_serve_http(loom_engine *e, const loom_tokenizer *tok, const loom_server_config *cfg);
#endif
