/* loom serve's HTTP front (include/loom/serve.h): libevent's evhttp parses HTTP and enforces its limits
 * (body size -> 413, header size, read timeouts, methods -> 405); this file maps OpenAI's requests onto
 * engine requests and the engine's events back onto JSON replies or Server-Sent Events. The event loop runs
 * on the calling thread; the engine's thread hands its events over through a locked queue and wakes the
 * loop with event_active. A call (one HTTP request being answered) lives until its last event is sent, or,
 * if its client goes away, until a marker queued behind the cancelled request's events comes out. */
#include "loom/serve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/json.h"
#include "loom/log.h"
#include "loom/chat.h"

#ifndef LOOM_HAVE_LIBEVENT
loom_status loom_serve_http(loom_engine *e, const loom_tokenizer *tok, const loom_server_config *cfg) {
    (void)e, (void)tok, (void)cfg;
    return loom_error_set(LOOM_ERR_UNSUPPORTED, __FILE__, __LINE__, __func__,
                          "loom was built without libevent (install libevent-dev: scripts/setup.sh) and cannot serve HTTP");
}
#else
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>

typedef struct server server;

typedef struct call {
    server *srv;
    struct evhttp_request *req;
    struct evhttp_connection *conn;
    uint64_t engine_id;
    int chat, stream, include_usage, gone, started;
    const char *model; /* the name it asked for: the model's, or an adapter set's */
    char id[48];
    long long created;
    loom_strbuf text; /* the whole reply text (not streamed) */
    struct call *prev, *next; /* the server's open calls */
} call;

typedef struct queued {
    call *c;
    int free_marker;
    loom_engine_event ev; /* text and error point into the strings below */
    char *text, *error;
    char reason[16];
    struct queued *next;
} queued;

struct server {
    loom_engine *engine;
    const loom_tokenizer *tok;
    loom_server_config cfg;
    struct event_base *base;
    struct event *notify, *sig_int, *sig_term;
    pthread_mutex_t lock;
    queued *head, *tail;
    uint64_t next_call;
    call *calls;
    int64_t http_status[6]; /* replies by class: 1xx..5xx */
};

/* ---- replies ---- */

static void send_json(struct evhttp_request *req, int code, const char *reason, const loom_strbuf *body) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "application/json");
    struct evbuffer *b = evbuffer_new();
    if (b && body->buf) evbuffer_add(b, body->buf, body->len);
    evhttp_send_reply(req, code, reason, b);
    if (b) evbuffer_free(b);
}

static void send_error(server *s, struct evhttp_request *req, int code, const char *type, const char *param,
                       const char *message) {
    static const struct { int code; const char *reason; } reasons[] = {
        {400, "Bad Request"}, {401, "Unauthorized"}, {404, "Not Found"}, {405, "Method Not Allowed"},
        {413, "Payload Too Large"}, {500, "Internal Server Error"}, {503, "Service Unavailable"}, {0, "Error"}};
    int i = 0;
    while (reasons[i].code && reasons[i].code != code) i++;
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    loom_strbuf_printf(&sb, "{\"error\":{\"message\":");
    loom_json_write_string(&sb, message);
    loom_strbuf_printf(&sb, ",\"type\":\"%s\",\"param\":", type);
    loom_json_write_string(&sb, param);
    loom_strbuf_printf(&sb, ",\"code\":%s}}", code == 404 && param ? "\"model_not_found\"" : "null");
    send_json(req, code, reasons[i].reason, &sb);
    loom_strbuf_free(&sb);
    s->http_status[code / 100]++;
}

/* ---- from the engine's thread ---- */

static void push(server *s, queued *q) {
    pthread_mutex_lock(&s->lock);
    if (s->tail) s->tail->next = q;
    else s->head = q;
    s->tail = q;
    pthread_mutex_unlock(&s->lock);
    event_active(s->notify, EV_READ, 0);
}

static void on_engine_event(void *ctx, const loom_engine_event *ev) {
    call *c = ctx;
    queued *q = calloc(1, sizeof *q);
    if (!q) return; /* out of memory: the text is lost, never the server */
    q->c = c;
    q->ev = *ev;
    q->text = malloc(ev->text_len + 1);
    if (q->text) memcpy(q->text, ev->text, ev->text_len);
    else q->ev.text_len = 0;
    q->ev.text = q->text;
    q->error = ev->error ? strdup(ev->error) : NULL;
    q->ev.error = q->error;
    snprintf(q->reason, sizeof q->reason, "%s", ev->finish_reason ? ev->finish_reason : "");
    q->ev.finish_reason = ev->finish_reason ? q->reason : NULL;
    push(c->srv, q);
}

/* ---- on the loop ---- */

static void call_free(call *c) {
    if (c->prev) c->prev->next = c->next;
    else c->srv->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    loom_strbuf_free(&c->text);
    free(c);
}

static void on_close(struct evhttp_connection *conn, void *arg) {
    call *c = arg;
    (void)conn;
    c->gone = 1;
    c->conn = NULL;
    loom_engine_cancel(c->srv->engine, c->engine_id);
    queued *q = calloc(1, sizeof *q); /* after every event of the cancelled request */
    if (!q) return;                   /* the call leaks rather than being freed under queued events */
    q->c = c;
    q->free_marker = 1;
    push(c->srv, q);
}

static void chunk_head(const call *c, loom_strbuf *sb) {
    loom_strbuf_printf(sb, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", c->id,
                       c->chat ? "chat.completion.chunk" : "text_completion", c->created);
    loom_json_write_string(sb, c->model);
    loom_strbuf_printf(sb, ",\"system_fingerprint\":null,\"choices\":[");
}

static void write_usage(loom_strbuf *sb, const loom_engine_event *ev) {
    loom_strbuf_printf(sb, "\"usage\":{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"total_tokens\":%lld}",
                       (long long)ev->prompt_tokens, (long long)ev->completion_tokens,
                       (long long)(ev->prompt_tokens + ev->completion_tokens));
}

static void send_sse(call *c, const loom_strbuf *sb) {
    struct evbuffer *b = evbuffer_new();
    if (!b) return;
    evbuffer_add(b, "data: ", 6);
    evbuffer_add(b, sb->buf, sb->len);
    evbuffer_add(b, "\n\n", 2);
    evhttp_send_reply_chunk(c->req, b);
    evbuffer_free(b);
}

static void stream_event(call *c, const loom_engine_event *ev) {
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    if (!c->started) { /* headers, and for chat the assistant's role first, as OpenAI sends it */
        struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
        evhttp_add_header(h, "Content-Type", "text/event-stream");
        evhttp_add_header(h, "Cache-Control", "no-cache");
        evhttp_send_reply_start(c->req, 200, "OK");
        c->started = 1;
        c->srv->http_status[2]++;
        if (c->chat) {
            chunk_head(c, &sb);
            loom_strbuf_printf(&sb, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
                                    "\"finish_reason\":null}]}");
            send_sse(c, &sb);
            loom_strbuf_free(&sb);
        }
    }
    if (ev->text_len || ev->finished) {
        chunk_head(c, &sb);
        if (c->chat) {
            loom_strbuf_printf(&sb, "{\"index\":0,\"delta\":{");
            if (ev->text_len) {
                loom_strbuf_printf(&sb, "\"content\":");
                loom_json_write_string_n(&sb, ev->text, ev->text_len);
            }
            loom_strbuf_printf(&sb, "},\"logprobs\":null,\"finish_reason\":");
        } else {
            loom_strbuf_printf(&sb, "{\"index\":0,\"text\":");
            loom_json_write_string_n(&sb, ev->text, ev->text_len);
            loom_strbuf_printf(&sb, ",\"logprobs\":null,\"finish_reason\":");
        }
        loom_json_write_string(&sb, ev->finished ? ev->finish_reason : NULL);
        loom_strbuf_printf(&sb, "}]}");
        send_sse(c, &sb);
        loom_strbuf_free(&sb);
    }
    if (!ev->finished) return;
    if (ev->error && strcmp(ev->finish_reason, "error") == 0) {
        loom_strbuf_printf(&sb, "{\"error\":{\"message\":");
        loom_json_write_string(&sb, ev->error);
        loom_strbuf_printf(&sb, ",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
        send_sse(c, &sb);
        loom_strbuf_free(&sb);
    }
    if (c->include_usage) {
        chunk_head(c, &sb);
        loom_strbuf_printf(&sb, "],");
        write_usage(&sb, ev);
        loom_strbuf_printf(&sb, "}");
        send_sse(c, &sb);
        loom_strbuf_free(&sb);
    }
    struct evbuffer *b = evbuffer_new();
    if (b) {
        evbuffer_add(b, "data: [DONE]\n\n", 14);
        evhttp_send_reply_chunk(c->req, b);
        evbuffer_free(b);
    }
    evhttp_send_reply_end(c->req);
}

static void whole_reply(call *c, const loom_engine_event *ev) {
    if (ev->finish_reason && !strcmp(ev->finish_reason, "error")) {
        send_error(c->srv, c->req, 500, "server_error", NULL, ev->error ? ev->error : "generation failed");
        return;
    }
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    loom_strbuf_printf(&sb, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", c->id,
                       c->chat ? "chat.completion" : "text_completion", c->created);
    loom_json_write_string(&sb, c->model);
    loom_strbuf_printf(&sb, ",\"system_fingerprint\":null,\"choices\":[{\"index\":0,");
    if (c->chat) {
        loom_strbuf_printf(&sb, "\"message\":{\"role\":\"assistant\",\"content\":");
        loom_json_write_string_n(&sb, c->text.buf ? c->text.buf : "", c->text.len);
        loom_strbuf_printf(&sb, ",\"refusal\":null}");
    } else {
        loom_strbuf_printf(&sb, "\"text\":");
        loom_json_write_string_n(&sb, c->text.buf ? c->text.buf : "", c->text.len);
    }
    loom_strbuf_printf(&sb, ",\"logprobs\":null,\"finish_reason\":");
    loom_json_write_string(&sb, ev->finish_reason);
    loom_strbuf_printf(&sb, "}],");
    write_usage(&sb, ev);
    loom_strbuf_printf(&sb, "}");
    if (sb.failed) send_error(c->srv, c->req, 500, "server_error", NULL, "out of memory");
    else {
        send_json(c->req, 200, "OK", &sb);
        c->srv->http_status[2]++;
    }
    loom_strbuf_free(&sb);
}

static void on_notify(evutil_socket_t fd, short what, void *arg) {
    server *s = arg;
    (void)fd, (void)what;
    pthread_mutex_lock(&s->lock);
    queued *q = s->head;
    s->head = s->tail = NULL;
    pthread_mutex_unlock(&s->lock);
    while (q) {
        queued *next = q->next;
        call *c = q->c;
        if (q->free_marker) {
            if (c->req) evhttp_send_reply_end(c->req); /* its connection is gone: this frees the request */
            call_free(c);
        } else if (!c->gone) {
            if (c->stream) stream_event(c, &q->ev);
            else if (q->ev.text_len) loom_strbuf_append(&c->text, q->ev.text, q->ev.text_len);
            if (q->ev.finished) {
                if (!c->stream) whole_reply(c, &q->ev);
                if (c->conn) evhttp_connection_set_closecb(c->conn, NULL, NULL);
                call_free(c);
            }
        }
        free(q->text);
        free(q->error);
        free(q);
        q = next;
    }
}

/* ---- requests ---- */

static int authorized(server *s, struct evhttp_request *req) {
    if (!s->cfg.api_key) return 1;
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!h || strncmp(h, "Bearer ", 7)) return 0;
    const char *k = h + 7, *want = s->cfg.api_key;
    const size_t n = strlen(k), w = strlen(want);
    unsigned diff = n != w;
    for (size_t i = 0; i < w; i++) diff |= (unsigned)(unsigned char)want[i] ^ (unsigned)(unsigned char)(i < n ? k[i] : 0);
    return diff == 0;
}

/* reads a number field: absent -> def; wrong type or out of [lo, hi] -> an error message */
static const char *get_number(const loom_json *body, const char *key, double lo, double hi, int integer, double def,
                              double *out, char *msg, size_t msg_size) {
    const loom_json *v = loom_json_get(body, key);
    *out = def;
    if (!v || v->type == LOOM_JSON_NULL) return NULL;
    if (v->type != LOOM_JSON_NUMBER || v->number < lo || v->number > hi || (integer && v->number != (double)(long long)v->number)) {
        snprintf(msg, msg_size, "'%s' must be %s in [%g, %g]", key, integer ? "an integer" : "a number", lo, hi);
        return msg;
    }
    *out = v->number;
    return NULL;
}

typedef struct {
    loom_request r;
    int32_t *ids;
    int stream, include_usage, max_tokens_given;
    char msg[256];
    const char *param;
} parsed;

/* the adapter set a request's "model" names: 0 the model itself (its name or "base"), k its k-th adapter set,
 * -1 none */
static int model_index(const server *s, const char *name) {
    if (!strcmp(name, s->cfg.model_name) || !strcmp(name, "base")) return 0;
    for (int i = 0; i < s->cfg.n_adapters; i++)
        if (!strcmp(name, s->cfg.adapter_names[i])) return i + 1;
    return -1;
}

/* OpenAI's sampling parameters and stop strings; returns an error message for a 400, else NULL */
static const char *parse_common(server *s, const loom_json *body, int chat, parsed *p) {
    double x;
    const char *err;
    const loom_json *model = loom_json_get(body, "model");
    if (model && model->type != LOOM_JSON_STRING) return p->param = "model", "'model' must be a string";
    p->r.sample = loom_sample_config_default();
    p->r.sample.stop_at_eot = 1;
#define NUM(key, lo, hi, integer, def, dst)                                                           \
    do {                                                                                              \
        if ((err = get_number(body, key, lo, hi, integer, def, &x, p->msg, sizeof p->msg))) return p->param = key, err; \
        dst = x;                                                                                      \
    } while (0)
    NUM("temperature", 0, 2, 0, 1.0, p->r.sample.temperature);
    NUM("top_p", 1e-9, 1, 0, 1.0, p->r.sample.top_p);
    NUM("top_k", -1, 1e9, 1, 0, p->r.sample.top_k);
    if (p->r.sample.top_k < 0) p->r.sample.top_k = 0; /* -1: off, as vLLM takes it */
    NUM("presence_penalty", -2, 2, 0, 0, p->r.presence_penalty);
    NUM("frequency_penalty", -2, 2, 0, 0, p->r.frequency_penalty);
    NUM("n", 1, 1, 1, 1, x);
    static uint64_t counter;
    NUM("seed", -9.2e18, 9.2e18, 1, (double)(time(NULL) + (long long)++counter * 7919), x);
    p->r.sample.seed = (uint64_t)(long long)x;
    const double def_max = chat ? 1e18 : 16; /* OpenAI's defaults: the context for chat, 16 for completions */
    NUM("max_tokens", 1, 1e18, 1, def_max, x);
    const loom_json *mct = loom_json_get(body, "max_completion_tokens");
    if (mct && mct->type != LOOM_JSON_NULL) NUM("max_completion_tokens", 1, 1e18, 1, def_max, x);
    p->r.sample.max_tokens = x > 4e18 ? INT64_MAX : (int64_t)x;
    const loom_json *mt = loom_json_get(body, "max_tokens");
    p->max_tokens_given = (mt && mt->type != LOOM_JSON_NULL) || (mct && mct->type != LOOM_JSON_NULL);
#undef NUM
    const loom_json *stop = loom_json_get(body, "stop");
    int n_stop = 0;
    if (stop && stop->type == LOOM_JSON_STRING) {
        if (stop->string[0]) p->r.stop[n_stop++] = stop->string;
    } else if (stop && stop->type == LOOM_JSON_ARRAY) {
        for (const loom_json *e = stop->child; e; e = e->next) {
            if (e->type != LOOM_JSON_STRING || n_stop >= LOOM_MAX_STOP - 1)
                return p->param = "stop", "'stop' must be a string or a list of up to 3 strings";
            if (e->string[0]) p->r.stop[n_stop++] = e->string;
        }
    } else if (stop && stop->type != LOOM_JSON_NULL) {
        return p->param = "stop", "'stop' must be a string or a list of up to 3 strings";
    }
    const loom_json *st = loom_json_get(body, "stream"), *so = loom_json_get(body, "stream_options");
    if (st && st->type != LOOM_JSON_BOOL && st->type != LOOM_JSON_NULL) return p->param = "stream", "'stream' must be a boolean";
    p->stream = st && st->type == LOOM_JSON_BOOL && st->boolean;
    if (so && so->type != LOOM_JSON_NULL) {
        const loom_json *iu = loom_json_get(so, "include_usage");
        if (so->type != LOOM_JSON_OBJECT || (iu && iu->type != LOOM_JSON_BOOL))
            return p->param = "stream_options", "'stream_options' must be an object with a boolean 'include_usage'";
        p->include_usage = iu && iu->boolean;
    }
    const loom_json *user = loom_json_get(body, "user");
    if (user && user->type != LOOM_JSON_STRING && user->type != LOOM_JSON_NULL) return p->param = "user", "'user' must be a string";
    (void)s;
    return NULL;
}

static const char *tokenize(server *s, const char *text, parsed *p) {
    int64_t n = 0;
    if (loom_tokenizer_encode(s->tok, text, strlen(text), &p->ids, &n) != LOOM_OK) {
        snprintf(p->msg, sizeof p->msg, "cannot tokenize the prompt: %s", loom_error_message());
        return p->msg;
    }
    p->r.prompt = p->ids;
    p->r.n_prompt = n;
    return n ? NULL : "the prompt is empty";
}

static const char *parse_prompt(server *s, const loom_json *body, parsed *p) {
    const loom_json *pr = loom_json_get(body, "prompt");
    p->param = "prompt";
    if (pr && pr->type == LOOM_JSON_STRING) return tokenize(s, pr->string, p);
    if (!pr || pr->type != LOOM_JSON_ARRAY || !pr->child) return "'prompt' must be a string, a list of one string, or a list of token ids";
    if (pr->child->type == LOOM_JSON_STRING) {
        if (pr->child->next) return "one prompt per request: 'prompt' lists several";
        return tokenize(s, pr->child->string, p);
    }
    int64_t n = 0;
    for (const loom_json *e = pr->child; e; e = e->next) n++;
    p->ids = malloc((size_t)n * sizeof(int32_t));
    if (!p->ids) return "out of memory";
    n = 0;
    for (const loom_json *e = pr->child; e; e = e->next) {
        if (e->type != LOOM_JSON_NUMBER || e->number < 0 || e->number >= 2147483647.0 || e->number != (double)(int32_t)e->number)
            return "'prompt' as a list must hold token ids (non-negative integers)";
        p->ids[n++] = (int32_t)e->number;
    }
    p->r.prompt = p->ids;
    p->r.n_prompt = n;
    return NULL;
}

static void handle_generate(server *s, struct evhttp_request *req, int chat) {
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    const size_t len = evbuffer_get_length(in);
    const char *text = (const char *)evbuffer_pullup(in, -1);
    loom_json *body = NULL;
    parsed p;
    memset(&p, 0, sizeof p);
    loom_strbuf prompt;
    loom_strbuf_init(&prompt);
    const char *err = NULL;
    int code = 400;
    if (!len || !text || loom_json_parse(text, len, &body) != LOOM_OK) {
        snprintf(p.msg, sizeof p.msg, "the body is not valid JSON: %s", len ? loom_error_message() : "it is empty");
        err = p.msg;
    } else if (body->type != LOOM_JSON_OBJECT) {
        err = "the body must be a JSON object";
    } else if (!(err = parse_common(s, body, chat, &p))) {
        const loom_json *model = loom_json_get(body, "model");
        p.r.adapter = model ? model_index(s, model->string) : 0;
        if (p.r.adapter < 0) {
            snprintf(p.msg, sizeof p.msg, "The model '%s' does not exist (this server has '%s'%s)", model->string,
                     s->cfg.model_name, s->cfg.n_adapters ? " and its adapters: see /v1/models" : "");
            err = p.msg;
            p.param = "model";
            code = 404;
        } else if (chat) {
            const char *stop = NULL;
            p.param = "messages";
            err = loom_chat_render(s->cfg.chat_template, loom_json_get(body, "messages"), &prompt, &stop);
            int i = 0;
            while (i < LOOM_MAX_STOP - 1 && p.r.stop[i]) i++;
            p.r.stop[i] = stop;
            if (!err) err = tokenize(s, prompt.buf, &p);
        } else {
            err = parse_prompt(s, body, &p);
        }
    }
    const int64_t ctx = loom_engine_context(s->engine);
    if (!err && p.max_tokens_given && p.r.n_prompt + p.r.sample.max_tokens > ctx) { /* as OpenAI answers */
        snprintf(p.msg, sizeof p.msg, "This model's maximum context length is %lld tokens. However, you requested "
                 "%lld tokens (%lld in the prompt, %lld for the completion). Please reduce the prompt or the "
                 "completion length.", (long long)ctx, (long long)(p.r.n_prompt + p.r.sample.max_tokens),
                 (long long)p.r.n_prompt, (long long)p.r.sample.max_tokens);
        err = p.msg;
        p.param = "max_tokens";
    }
    uint64_t id = 0;
    call *c = NULL;
    if (!err) {
        c = calloc(1, sizeof *c);
        if (!c) err = "out of memory", code = 500;
    }
    if (!err) {
        c->srv = s;
        c->next = s->calls;
        if (s->calls) s->calls->prev = c;
        s->calls = c;
        c->req = req;
        c->conn = evhttp_request_get_connection(req);
        c->chat = chat;
        c->model = p.r.adapter ? s->cfg.adapter_names[p.r.adapter - 1] : s->cfg.model_name;
        c->stream = p.stream;
        c->include_usage = p.include_usage;
        c->created = (long long)time(NULL);
        loom_strbuf_init(&c->text);
        snprintf(c->id, sizeof c->id, "%s-%llu%06llx", chat ? "chatcmpl" : "cmpl", (unsigned long long)++s->next_call,
                 (unsigned long long)(c->created & 0xffffff));
        p.r.on_event = on_engine_event;
        p.r.ctx = c;
        const loom_status st = loom_engine_submit(s->engine, &p.r, &id);
        if (st != LOOM_OK) {
            snprintf(p.msg, sizeof p.msg, "%s", loom_error_message());
            err = p.msg;
            p.param = st == LOOM_ERR_INVALID_ARG ? (chat ? "messages" : "prompt") : NULL;
            code = st == LOOM_ERR_INVALID_ARG ? 400 : 503;
            call_free(c);
        } else {
            c->engine_id = id;
            if (c->conn) evhttp_connection_set_closecb(c->conn, on_close, c);
        }
    }
    if (err) send_error(s, req, code, code >= 500 ? "server_error" : "invalid_request_error", p.param, err);
    free(p.ids);
    loom_strbuf_free(&prompt);
    loom_json_free(&body);
}

static void handle_models(server *s, struct evhttp_request *req) {
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    loom_strbuf_printf(&sb, "{\"object\":\"list\",\"data\":[");
    for (int i = 0; i <= s->cfg.n_adapters; i++) {
        loom_strbuf_printf(&sb, "%s{\"id\":", i ? "," : "");
        loom_json_write_string(&sb, i ? s->cfg.adapter_names[i - 1] : s->cfg.model_name);
        loom_strbuf_printf(&sb, ",\"object\":\"model\",\"created\":0,\"owned_by\":\"loom\"");
        if (i) {
            loom_strbuf_printf(&sb, ",\"parent\":");
            loom_json_write_string(&sb, s->cfg.model_name);
        }
        loom_strbuf_printf(&sb, "}");
    }
    loom_strbuf_printf(&sb, "]}");
    send_json(req, 200, "OK", &sb);
    s->http_status[2]++;
    loom_strbuf_free(&sb);
}

static void histogram(loom_strbuf *sb, const char *name, const char *help, const int64_t *count, double sum) {
    loom_strbuf_printf(sb, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    int64_t acc = 0;
    for (int i = 0; i < LOOM_ENGINE_HIST; i++) {
        acc += count[i];
        if (i < LOOM_ENGINE_HIST - 1) loom_strbuf_printf(sb, "%s_bucket{le=\"%g\"} %lld\n", name, loom_engine_hist_bounds[i], (long long)acc);
        else loom_strbuf_printf(sb, "%s_bucket{le=\"+Inf\"} %lld\n", name, (long long)acc);
    }
    loom_strbuf_printf(sb, "%s_sum %.6f\n%s_count %lld\n", name, sum, name, (long long)acc);
}

static void handle_metrics(server *s, struct evhttp_request *req) {
    loom_engine_stats st;
    loom_engine_get_stats(s->engine, &st);
    loom_strbuf sb;
    loom_strbuf_init(&sb);
#define METRIC(name, type, help, value) \
    loom_strbuf_printf(&sb, "# HELP " name " " help "\n# TYPE " name " " type "\n" name " %lld\n", (long long)(value))
    METRIC("loom_requests_total", "counter", "Generation requests accepted.", st.requests);
    METRIC("loom_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", st.prompt_tokens);
    METRIC("loom_generation_tokens_total", "counter", "Tokens generated.", st.generation_tokens);
    METRIC("loom_queue_depth", "gauge", "Requests waiting for a sequence slot or key/value blocks.", st.queue_depth);
    METRIC("loom_running_sequences", "gauge", "Sequences in the running batch.", st.running);
    METRIC("loom_kv_blocks_used", "gauge", "Key/value blocks held by sequences.", st.kv_blocks_used);
    METRIC("loom_kv_blocks_free", "gauge", "Key/value blocks free (cached prefixes included).", st.kv_blocks_free);
    METRIC("loom_prefix_cache_queries_total", "counter", "Prompt blocks looked up in the prefix cache.", st.prefix_queries);
    METRIC("loom_prefix_cache_hits_total", "counter", "Prompt blocks reused from the prefix cache.", st.prefix_hits);
    METRIC("loom_preemptions_total", "counter", "Sequences preempted (recomputed later) for want of blocks.", st.preemptions);
    METRIC("loom_engine_steps_total", "counter", "Batched forward passes run.", st.steps);
    loom_strbuf_printf(&sb, "# HELP loom_http_responses_total HTTP responses by status class.\n"
                            "# TYPE loom_http_responses_total counter\n");
    for (int i = 2; i <= 5; i++)
        loom_strbuf_printf(&sb, "loom_http_responses_total{code=\"%dxx\"} %lld\n", i, (long long)s->http_status[i]);
#undef METRIC
    histogram(&sb, "loom_time_to_first_token_seconds", "From arrival to the first generated token.", st.ttft_count, st.ttft_sum);
    histogram(&sb, "loom_inter_token_seconds", "Between consecutive generated tokens of a sequence.", st.itl_count, st.itl_sum);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/plain; version=0.0.4");
    struct evbuffer *b = evbuffer_new();
    if (b && sb.buf) evbuffer_add(b, sb.buf, sb.len);
    evhttp_send_reply(req, 200, "OK", b);
    s->http_status[2]++;
    if (b) evbuffer_free(b);
    loom_strbuf_free(&sb);
}

static void on_request(struct evhttp_request *req, void *arg) {
    server *s = arg;
    const char *uri = evhttp_request_get_uri(req);
    const enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    char path[128] = "";
    const char *q = strchr(uri, '?');
    snprintf(path, sizeof path, "%.*s", (int)(q ? (size_t)(q - uri) : strlen(uri)), uri);
    const int get = cmd == EVHTTP_REQ_GET, post = cmd == EVHTTP_REQ_POST;
    if (!strcmp(path, "/health")) {
        if (!get) return send_error(s, req, 405, "invalid_request_error", NULL, "use GET");
        loom_strbuf sb;
        loom_strbuf_init(&sb);
        loom_strbuf_printf(&sb, "{\"status\":\"ok\"}");
        send_json(req, 200, "OK", &sb);
        s->http_status[2]++;
        loom_strbuf_free(&sb);
        return;
    }
    if (!strcmp(path, "/metrics")) {
        if (!get) return send_error(s, req, 405, "invalid_request_error", NULL, "use GET");
        return handle_metrics(s, req);
    }
    const int completions = !strcmp(path, "/v1/completions"), chat = !strcmp(path, "/v1/chat/completions");
    const int models = !strcmp(path, "/v1/models");
    if (!completions && !chat && !models) {
        char msg[200];
        snprintf(msg, sizeof msg, "no such endpoint: %.120s", path);
        return send_error(s, req, 404, "invalid_request_error", NULL, msg);
    }
    if (!authorized(s, req))
        return send_error(s, req, 401, "authentication_error", NULL, "Incorrect API key provided (Authorization: Bearer KEY).");
    if (models) {
        if (!get) return send_error(s, req, 405, "invalid_request_error", NULL, "use GET");
        return handle_models(s, req);
    }
    if (!post) return send_error(s, req, 405, "invalid_request_error", NULL, "use POST");
    handle_generate(s, req, chat);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    server *s = arg;
    (void)what;
    LOOM_INFO("serve: signal %d, stopping", (int)sig);
    event_base_loopbreak(s->base);
}

loom_status loom_serve_http(loom_engine *e, const loom_tokenizer *tok, const loom_server_config *cfg) {
    LOOM_CHECK(loom_chat_template_known(cfg->chat_template), LOOM_ERR_INVALID_ARG,
               "unknown chat template '%s' (plain, chatml, llama3)", cfg->chat_template);
    static int threads_on;
    if (!threads_on) {
        LOOM_CHECK(evthread_use_pthreads() == 0, LOOM_ERR_UNSUPPORTED, "libevent without thread support");
        threads_on = 1;
    }
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-reply is an error on its write, never the server's death */
    server s;
    memset(&s, 0, sizeof s);
    s.engine = e;
    s.tok = tok;
    s.cfg = *cfg;
    pthread_mutex_init(&s.lock, NULL);
    loom_status st = LOOM_OK;
    struct evhttp *http = NULL;
    s.base = event_base_new();
    if (s.base) http = evhttp_new(s.base);
    if (!s.base || !http) st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "cannot start libevent");
    struct evhttp_bound_socket *sock = NULL;
    if (st == LOOM_OK) {
        evhttp_set_max_body_size(http, (ev_ssize_t)cfg->max_body);
        evhttp_set_max_headers_size(http, 64 * 1024);
        evhttp_set_timeout(http, cfg->timeout_s);
        evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                           EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH); /* 405 below */
        evhttp_set_gencb(http, on_request, &s);
        sock = evhttp_bind_socket_with_handle(http, cfg->host, (ev_uint16_t)cfg->port);
        if (!sock)
            st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot listen on %s:%d (in use, or not an "
                                "address of this machine)", cfg->host, cfg->port);
    }
    if (st == LOOM_OK) {
        s.notify = event_new(s.base, -1, 0, on_notify, &s);
        s.sig_int = evsignal_new(s.base, SIGINT, on_signal, &s);
        s.sig_term = evsignal_new(s.base, SIGTERM, on_signal, &s);
        if (!s.notify || !s.sig_int || !s.sig_term || event_add(s.sig_int, NULL) || event_add(s.sig_term, NULL))
            st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "cannot set up libevent's events");
    }
    if (st == LOOM_OK) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int port = cfg->port;
        if (getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss, &sl) == 0)
            port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&ss)->sin_port);
        fprintf(stderr, "loom serve: listening on http://%s:%d (model %s)\n", cfg->host, port, cfg->model_name);
        fflush(stderr);
        event_base_dispatch(s.base);
    }
    /* no engine callback after this; then the queued events and the open calls go */
    loom_engine_cancel_all(e);
    if (s.notify) on_notify(-1, 0, &s);
    while (s.calls) {
        if (s.calls->conn) evhttp_connection_set_closecb(s.calls->conn, NULL, NULL);
        call_free(s.calls);
    }
    if (http) evhttp_free(http);
    if (s.notify) event_free(s.notify);
    if (s.sig_int) event_free(s.sig_int);
    if (s.sig_term) event_free(s.sig_term);
    if (s.base) event_base_free(s.base);
    pthread_mutex_destroy(&s.lock);
    return st;
}
#endif
