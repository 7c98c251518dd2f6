/* A run's checkpoint, in either layout (include/loom/run.h):
 *   one process:  <out>/checkpoint.bin, one file of sections (meta, state, params, optim.0, optim.1)
 *   N processes:  <out>/shards/step-NNNNNNNN/rank-RRRRR.bin, each rank's slice of the flat buffers, and the
 *                 manifest <out>/checkpoint.json, written last and atomically by rank 0: the commit point
 * Readers address flat positions, so any slice can be read from either layout: that is resharding. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom/ckpt.h"

#define LOOM_PATH_MAX 4096

typedef struct {
    char file[2 * LOOM_PATH_MAX + 64];
    int64_t begin, end;
    uint32_t crc[3];
    int verified[3]; /* the section checked once: later parts are read without reading it all again */
} shard_entry;

struct loom_run_ckpt {
    char path[LOOM_PATH_MAX + 64]; /* the file opened (checkpoint.bin or checkpoint.json) */
    int sharded;
    loom_json *doc;             /* single: the meta; sharded: the manifest */
    const loom_json *meta;
    loom_ckpt_reader *single;
    int64_t n;
    int world;
    shard_entry *shards;
    int n_shards;
    int verified[3]; /* single file: as shard_entry's */
};

static const char *const section_names[3] = {"params", "optim.0", "optim.1"};
static int section_index(const char *s) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, section_names[i])) return i;
    return -1;
}

static int64_t meta_step(const loom_json *meta) {
    const loom_json *s = meta ? loom_json_get(meta, "step") : NULL;
    return s && s->type == LOOM_JSON_NUMBER ? (int64_t)s->number : -1;
}

static loom_status open_single(loom_run_ckpt *c, const char *file) {
    char *text = NULL;
    snprintf(c->path, sizeof c->path, "%s", file);
    LOOM_CALL(loom_ckpt_open(file, &c->single));
    LOOM_CALL(loom_ckpt_read_text(c->single, "meta", &text));
    loom_status st = loom_json_parse(text, strlen(text), &c->doc);
    free(text);
    LOOM_CALL(st);
    const loom_json *fmt = loom_json_get(c->doc, "format");
    LOOM_CHECK(fmt && fmt->type == LOOM_JSON_STRING && !strcmp(fmt->string, "loom.train"), LOOM_ERR_FORMAT,
               "%s is not a loom training checkpoint", file);
    c->meta = c->doc;
    c->n = loom_ckpt_section_size(c->single, "params") / 4;
    LOOM_CHECK(c->n > 0, LOOM_ERR_FORMAT, "%s has no parameters", file);
    c->world = 1;
    return LOOM_OK;
}

static loom_status hex_decode(const char *hex, void *dst, int64_t n) {
    LOOM_CHECK((int64_t)strlen(hex) == 2 * n, LOOM_ERR_FORMAT, "state is %zu hex digits, expected %lld", strlen(hex),
               (long long)(2 * n));
    unsigned char *d = dst;
    for (int64_t i = 0; i < n; i++) {
        unsigned v = 0;
        LOOM_CHECK(sscanf(hex + 2 * i, "%2x", &v) == 1, LOOM_ERR_FORMAT, "state: bad hex digit");
        d[i] = (unsigned char)v;
    }
    return LOOM_OK;
}

static loom_status open_sharded(loom_run_ckpt *c, const char *file) {
    snprintf(c->path, sizeof c->path, "%s", file);
    LOOM_CALL(loom_json_parse_file(file, &c->doc));
    const loom_json *fmt = loom_json_get(c->doc, "format"), *meta = loom_json_get(c->doc, "meta"),
                    *n = loom_json_get(c->doc, "n"), *dir = loom_json_get(c->doc, "dir"),
                    *sh = loom_json_get(c->doc, "shards"), *w = loom_json_get(c->doc, "world");
    LOOM_CHECK(fmt && fmt->type == LOOM_JSON_STRING && !strcmp(fmt->string, "loom.sharded"), LOOM_ERR_FORMAT,
               "%s is not a loom sharded-checkpoint manifest", file);
    LOOM_CHECK(meta && meta->type == LOOM_JSON_OBJECT && n && n->type == LOOM_JSON_NUMBER && n->number > 0 && dir &&
                   dir->type == LOOM_JSON_STRING && sh && sh->type == LOOM_JSON_ARRAY && sh->n_children > 0 && w &&
                   w->type == LOOM_JSON_NUMBER,
               LOOM_ERR_FORMAT, "%s: manifest lacks meta, n, dir, world or shards", file);
    c->meta = meta;
    c->n = (int64_t)n->number;
    c->world = (int)w->number;
    c->sharded = 1;
    c->n_shards = (int)sh->n_children;
    c->shards = calloc((size_t)c->n_shards, sizeof *c->shards);
    LOOM_CHECK(c->shards != NULL, LOOM_ERR_NOMEM, "out of memory");
    char base[LOOM_PATH_MAX];
    snprintf(base, sizeof base, "%s", file);
    char *slash = strrchr(base, '/');
    if (slash) *slash = '\0';
    else snprintf(base, sizeof base, ".");
    int64_t expect = 0;
    const loom_json *e = sh->child;
    for (int i = 0; i < c->n_shards; i++, e = e->next) {
        const loom_json *f = loom_json_get(e, "file"), *b = loom_json_get(e, "begin"),
                        *en = loom_json_get(e, "end"), *crc = loom_json_get(e, "crc32c");
        LOOM_CHECK(f && f->type == LOOM_JSON_STRING && b && b->type == LOOM_JSON_NUMBER && en &&
                       en->type == LOOM_JSON_NUMBER && crc && crc->type == LOOM_JSON_ARRAY && crc->n_children == 3,
                   LOOM_ERR_FORMAT, "%s: shard %d lacks file, begin, end or crc32c", file, i);
        shard_entry *s = &c->shards[i];
        snprintf(s->file, sizeof s->file, "%s/%s/%s", base, dir->string, f->string);
        s->begin = (int64_t)b->number;
        s->end = (int64_t)en->number;
        const loom_json *ck = crc->child;
        for (int k = 0; k < 3; k++, ck = ck->next) s->crc[k] = (uint32_t)ck->number;
        LOOM_CHECK(s->begin == expect && s->end >= s->begin && s->end <= c->n, LOOM_ERR_FORMAT,
                   "%s: shard %d covers [%lld, %lld), expected to start at %lld", file, i, (long long)s->begin,
                   (long long)s->end, (long long)expect);
        expect = s->end;
    }
    LOOM_CHECK(expect == c->n, LOOM_ERR_FORMAT, "%s: the shards cover %lld of %lld floats", file, (long long)expect,
               (long long)c->n);
    return LOOM_OK;
}

/* the file given: a manifest (.json) or a single-file checkpoint */
static loom_status open_file(const char *path, loom_run_ckpt **out) {
    *out = NULL;
    loom_run_ckpt *c = calloc(1, sizeof *c);
    LOOM_CHECK(c != NULL, LOOM_ERR_NOMEM, "out of memory");
    size_t len = strlen(path);
    loom_status st = (len > 5 && !strcmp(path + len - 5, ".json")) ? open_sharded(c, path) : open_single(c, path);
    if (st != LOOM_OK) {
        loom_run_ckpt_close(&c);
        return st;
    }
    *out = c;
    return LOOM_OK;
}

/* a directory: the newer of its checkpoint.bin and checkpoint.json; else the file given */
loom_status loom_run_ckpt_open(const char *path, loom_run_ckpt **out) {
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) return open_file(path, out);
    char bin[LOOM_PATH_MAX + 32], man[LOOM_PATH_MAX + 32];
    snprintf(bin, sizeof bin, "%s/checkpoint.bin", path);
    snprintf(man, sizeof man, "%s/checkpoint.json", path);
    const int has_bin = access(bin, F_OK) == 0, has_man = access(man, F_OK) == 0;
    LOOM_CHECK(has_bin || has_man, LOOM_ERR_IO, "%s holds no checkpoint (checkpoint.bin or checkpoint.json)", path);
    if (!has_bin || !has_man) return open_file(has_bin ? bin : man, out);
    loom_run_ckpt *a = NULL, *b = NULL; /* both: the one of the later step */
    LOOM_CALL(open_file(bin, &a));
    loom_status st = open_file(man, &b);
    if (st != LOOM_OK) {
        loom_run_ckpt_close(&a);
        return st;
    }
    const int bin_newer = meta_step(a->meta) >= meta_step(b->meta);
    *out = bin_newer ? a : b;
    loom_run_ckpt_close(bin_newer ? &b : &a);
    return LOOM_OK;
}

void loom_run_ckpt_close(loom_run_ckpt **pc) {
    if (!pc || !*pc) return;
    loom_ckpt_close(&(*pc)->single);
    loom_json_free(&(*pc)->doc);
    free((*pc)->shards);
    free(*pc);
    *pc = NULL;
}

const loom_json *loom_run_ckpt_meta(const loom_run_ckpt *c) { return c->meta; }
const char *loom_run_ckpt_path(const loom_run_ckpt *c) { return c->path; }
int loom_run_ckpt_world(const loom_run_ckpt *c) { return c->world; }
int64_t loom_run_ckpt_size(const loom_run_ckpt *c) { return c->n; }

int loom_run_ckpt_has(const loom_run_ckpt *c, const char *section) {
    int k = section_index(section);
    if (k < 0) return 0;
    if (!c->sharded) return loom_ckpt_section_size(c->single, section) >= 0;
    const loom_json *ns = loom_json_get(c->doc, "sections");
    return ns && ns->type == LOOM_JSON_NUMBER && k < (int)ns->number;
}

loom_status loom_run_ckpt_read(loom_run_ckpt *c, const char *section, int64_t begin, int64_t end, float *dst) {
    int k = section_index(section);
    LOOM_CHECK(k >= 0 && begin >= 0 && begin <= end && end <= c->n, LOOM_ERR_INVALID_ARG,
               "%s: read of %s [%lld, %lld) outside [0, %lld)", c->path, section, (long long)begin, (long long)end,
               (long long)c->n);
    LOOM_CHECK(loom_run_ckpt_has(c, section), LOOM_ERR_MISMATCH, "%s has no section %s (written by another optimizer?)",
               c->path, section);
    if (!c->sharded) {
        int64_t sz = loom_ckpt_section_size(c->single, section);
        LOOM_CHECK(sz == c->n * 4, LOOM_ERR_FORMAT, "%s: section %s is %lld bytes, expected %lld", c->path, section,
                   (long long)sz, (long long)(c->n * 4));
        if (begin == 0 && end == c->n) return loom_ckpt_read(c->single, section, dst, sz);
        /* a part (a model loaded in pieces): the section's checksum once, then only the part itself */
        if (!c->verified[k]) LOOM_CALL(loom_ckpt_verify(c->single, section, NULL));
        c->verified[k] = 1;
        return loom_ckpt_read_part(c->single, section, begin * 4, dst, (end - begin) * 4);
    }
    for (int i = 0; i < c->n_shards; i++) {
        shard_entry *s = &c->shards[i];
        int64_t lo = begin > s->begin ? begin : s->begin, hi = end < s->end ? end : s->end;
        if (lo >= hi) continue;
        loom_ckpt_reader *r = NULL;
        loom_status st;
        const int64_t bytes = (s->end - s->begin) * 4;
        uint32_t crc = 0;
        LOOM_CALL_GOTO(st, loom_ckpt_open(s->file, &r), shard_done);
        if (lo == s->begin && hi == s->end) { /* the whole shard: one pass reads and checks it */
            LOOM_CALL_GOTO(st, loom_ckpt_read(r, section, dst + (lo - begin), bytes), shard_done);
            crc = loom_crc32c(0, dst + (lo - begin), (size_t)bytes);
        } else if (!s->verified[k]) {
            LOOM_CALL_GOTO(st, loom_ckpt_verify(r, section, &crc), shard_done);
        } else {
            crc = s->crc[k];
        }
        /* the manifest's checksum ties the shard to this checkpoint (not a stale file of another step) */
        LOOM_CHECK_GOTO(st, crc == s->crc[k], LOOM_ERR_CHECKSUM, shard_done,
                        "%s: section %s does not match the manifest %s (a shard of another checkpoint?)", s->file,
                        section, c->path);
        s->verified[k] = 1;
        if (lo != s->begin || hi != s->end)
            LOOM_CALL_GOTO(st, loom_ckpt_read_part(r, section, (lo - s->begin) * 4, dst + (lo - begin), (hi - lo) * 4),
                           shard_done);
        st = LOOM_OK;
    shard_done:
        loom_ckpt_close(&r);
        LOOM_CALL(st);
    }
    return LOOM_OK;
}

loom_status loom_run_ckpt_read_state(loom_run_ckpt *c, void *dst, int64_t bytes) {
    /* an older, shorter state: its fields, the newer ones zero */
    const loom_json *h = c->sharded ? loom_json_get(c->doc, "state_hex") : NULL;
    LOOM_CHECK(!c->sharded || (h && h->type == LOOM_JSON_STRING), LOOM_ERR_FORMAT, "%s: manifest lacks state_hex",
               c->path);
    const int64_t stored = c->sharded ? (int64_t)strlen(h->string) / 2 : loom_ckpt_section_size(c->single, "state");
    LOOM_CHECK(stored > 0 && stored <= bytes, LOOM_ERR_FORMAT, "%s: a training state of %lld bytes, expected at most %lld",
               c->path, (long long)stored, (long long)bytes);
    memset(dst, 0, (size_t)bytes);
    if (!c->sharded) return loom_ckpt_read(c->single, "state", dst, stored);
    return hex_decode(h->string, dst, stored);
}

/* ---- writing ---- */

static loom_status mkdir_one(const char *p) {
    LOOM_CHECK(mkdir(p, 0755) == 0 || errno == EEXIST, LOOM_ERR_IO, "cannot create %s: %s", p, strerror(errno));
    return LOOM_OK;
}

/* removes a directory of plain files (a shard directory) */
static void remove_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[LOOM_PATH_MAX + 300];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

typedef struct {
    int64_t begin, end;
    uint32_t crc[3];
    int32_t ok;
    int32_t pad;
} shard_report;

/* step N of a "step-NNNNNNNN" directory name, or -1 */
static int64_t step_of_dir(const char *name) {
    char *e = NULL;
    if (strncmp(name, "step-", 5) != 0) return -1;
    long long v = strtoll(name + 5, &e, 10);
    return e && *e == '\0' && e != name + 5 ? (int64_t)v : -1;
}

/* After a commit of `step`: the shard directories of all but the newest `keep` complete steps up to it go,
 * those of incomplete ones (no manifest of their own: a writer died) before it, and any of a later step (left
 * by a run that was resumed from an earlier checkpoint: another history). */
static void remove_old_steps(const char *shards, int64_t step, int64_t keep) {
    DIR *d = opendir(shards);
    if (!d) return;
    int64_t *steps = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    char old[LOOM_PATH_MAX + 300];
    while ((e = readdir(d)) != NULL) {
        const int64_t k = step_of_dir(e->d_name);
        if (k < 0) continue;
        snprintf(old, sizeof old, "%s/%s/checkpoint.json", shards, e->d_name);
        if (k < step && access(old, F_OK) != 0) { /* incomplete */
            snprintf(old, sizeof old, "%s/%s", shards, e->d_name);
            remove_flat_dir(old);
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *grown = realloc(steps, cap * sizeof *steps);
            if (!grown) break;
            steps = grown;
        }
        steps[n++] = k;
    }
    closedir(d);
    for (size_t i = 0; i < n; i++) {
        int64_t newer = 0; /* steps newer than this one, up to the committed step */
        for (size_t j = 0; j < n; j++) newer += steps[j] > steps[i] && steps[j] <= step;
        if (steps[i] <= step && newer < keep) continue;
        snprintf(old, sizeof old, "%s/step-%08lld", shards, (long long)steps[i]);
        remove_flat_dir(old);
    }
    free(steps);
}

/* The manifest of one sharded step; `dir` is where its shards are, relative to the manifest's directory. */
static loom_status write_manifest(const char *file, const char *dir, int64_t step, int N, int zero_stage, int64_t n,
                                  int n_sec, const void *state, int64_t state_bytes, const shard_report *all,
                                  const char *meta_json) {
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    loom_strbuf_printf(&sb, "{\"format\":\"loom.sharded\",\"version\":1,\"step\":%lld,\"world\":%d,\"zero\":%d,"
                            "\"n\":%lld,\"sections\":%d,\"dir\":\"%s\",\"state_hex\":\"",
                       (long long)step, N, zero_stage, (long long)n, n_sec, dir);
    for (int64_t i = 0; i < state_bytes; i++) loom_strbuf_printf(&sb, "%02x", ((const unsigned char *)state)[i]);
    loom_strbuf_printf(&sb, "\",\"shards\":[");
    for (int i = 0; i < N; i++)
        loom_strbuf_printf(&sb, "%s{\"file\":\"rank-%05d.bin\",\"begin\":%lld,\"end\":%lld,\"crc32c\":[%u,%u,%u]}",
                           i ? "," : "", i, (long long)all[i].begin, (long long)all[i].end, all[i].crc[0], all[i].crc[1],
                           all[i].crc[2]);
    loom_strbuf_printf(&sb, "],\"meta\":%s}\n", meta_json);
    loom_status st = sb.failed ? loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory")
                               : loom_file_write_atomic(file, sb.buf, sb.len);
    loom_strbuf_free(&sb);
    return st;
}

/* the oldest complete step that a commit keeping `keep` steps drops, or -1 */
static int64_t doomed_step(const char *shards, int64_t keep) {
    DIR *d = opendir(shards);
    if (!d) return -1;
    int64_t oldest = -1, count = 0;
    struct dirent *e;
    char man[LOOM_PATH_MAX + 300];
    while ((e = readdir(d)) != NULL) {
        const int64_t k = step_of_dir(e->d_name);
        snprintf(man, sizeof man, "%s/%s/checkpoint.json", shards, e->d_name);
        if (k < 0 || access(man, F_OK) != 0) continue;
        count++;
        if (oldest < 0 || k < oldest) oldest = k;
    }
    closedir(d);
    return count >= keep ? oldest : -1;
}

loom_status loom_run_ckpt_save_sharded(const char *out, loom_comm *dp, const char *meta_json, int recycle, int64_t step,
                                       int zero_stage, int64_t keep, const void *state, int64_t state_bytes,
                                       int64_t n, int64_t begin, int64_t end, const loom_ckpt_section slices[3]) {
    const int N = loom_comm_size(dp), r = loom_comm_rank(dp);
    char shards[LOOM_PATH_MAX + 16], dir[LOOM_PATH_MAX + 48], file[LOOM_PATH_MAX + 80], fname[32];
    snprintf(shards, sizeof shards, "%s/shards", out);
    snprintf(dir, sizeof dir, "%s/step-%08lld", shards, (long long)step);
    snprintf(fname, sizeof fname, "rank-%05d.bin", r);
    snprintf(file, sizeof file, "%s/%s", dir, fname);
    shard_report me;
    memset(&me, 0, sizeof me);
    me.begin = begin;
    me.end = end;
    loom_status st = mkdir_one(shards);
    if (st == LOOM_OK) st = mkdir_one(dir);
    int n_sec = 0;
    if (st == LOOM_OK) {
        char m[160];
        snprintf(m, sizeof m, "{\"format\":\"loom.shard\",\"rank\":%d,\"world\":%d,\"begin\":%lld,\"end\":%lld,\"step\":%lld}",
                 r, N, (long long)begin, (long long)end, (long long)step);
        loom_ckpt_section s[4] = {{"meta", m, (int64_t)strlen(m), NULL, NULL}};
        int ns = 1, which[4] = {-1, -1, -1, -1};
        for (int k = 0; k < 3; k++)
            if (slices[k].data || slices[k].fill) {
                s[ns] = slices[k];
                s[ns].name = section_names[k];
                s[ns].nbytes = (end - begin) * 4;
                which[ns++] = k;
                n_sec = k + 1;
            }
        uint32_t crcs[4];
        char old[LOOM_PATH_MAX + 80] = "";
        const int64_t doomed = recycle ? doomed_step(shards, keep) : -1;
        if (doomed >= 0 && doomed != step)
            snprintf(old, sizeof old, "%s/step-%08lld/%s", shards, (long long)doomed, fname);
        st = loom_ckpt_write_recycled(file, old[0] ? old : NULL, s, ns, crcs);
        for (int i = 1; i < ns && st == LOOM_OK; i++) me.crc[which[i]] = crcs[i];
    }
    me.ok = st == LOOM_OK;
    /* every rank learns whether every shard is durable before the manifest commits them */
    shard_report *all = calloc((size_t)N, sizeof *all);
    loom_status ast = all ? LOOM_OK : loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    if (ast == LOOM_OK) ast = loom_comm_allgather_bytes(dp, &me, (int64_t)sizeof me, all);
    int failed = ast == LOOM_OK ? -1 : r;
    for (int i = 0; i < N && failed < 0; i++)
        if (!all[i].ok) failed = i;
    if (failed >= 0) { /* nothing of this step stays: the previous checkpoint is the newest */
        free(all);
        if (me.ok) unlink(file);
        if (ast != LOOM_OK) return ast; /* no agreement: this rank's error alone */
        rmdir(dir);                     /* when it is empty: the last rank to leave removes it */
        if (st == LOOM_OK)
            st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__,
                                "rank %d could not write its checkpoint shard of step %lld (its message says why); "
                                "the previous checkpoint stays", failed, (long long)step);
        loom_error_mark_collective();
        return st;
    }
    int64_t committed = 1;
    if (r == 0) { /* the step's own manifest (kept with its shards), then the run's: the commit point */
        char man[LOOM_PATH_MAX + 32], own[LOOM_PATH_MAX + 80], rel[32];
        snprintf(own, sizeof own, "%s/checkpoint.json", dir);
        snprintf(man, sizeof man, "%s/checkpoint.json", out);
        snprintf(rel, sizeof rel, "shards/step-%08lld", (long long)step);
        st = write_manifest(own, ".", step, N, zero_stage, n, n_sec, state, state_bytes, all, meta_json);
        if (st == LOOM_OK)
            st = write_manifest(man, rel, step, N, zero_stage, n, n_sec, state, state_bytes, all, meta_json);
        committed = st == LOOM_OK;
        if (committed) remove_old_steps(shards, step, keep);
    }
    free(all);
    LOOM_CALL(loom_comm_broadcast(dp, &committed, (int64_t)sizeof committed, 0));
    if (!committed) {
        if (r != 0)
            st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__,
                                "rank 0 could not write the checkpoint manifest; the previous checkpoint stays");
        loom_error_mark_collective();
        return st;
    }
    return LOOM_OK;
}

void loom_run_ckpt_prune(const char *out, int64_t keep) {
    char shards[LOOM_PATH_MAX + 16];
    snprintf(shards, sizeof shards, "%s/shards", out);
    remove_old_steps(shards, INT64_MAX, keep);
}

void loom_run_ckpt_move_aside(const char *out) {
    char a[LOOM_PATH_MAX + 64], b[LOOM_PATH_MAX + 64];
    snprintf(a, sizeof a, "%s/checkpoint.json", out);
    if (access(a, F_OK) != 0) return;
    snprintf(b, sizeof b, "%s/shards.prev", out);
    DIR *d = opendir(b);
    struct dirent *e;
    char p[LOOM_PATH_MAX + 400];
    while (d && (e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", b, e->d_name);
            remove_flat_dir(p);
        }
    if (d) closedir(d);
    rmdir(b);
    snprintf(a, sizeof a, "%s/shards", out);
    (void)rename(a, b);
    snprintf(a, sizeof a, "%s/checkpoint.json", out);
    snprintf(b, sizeof b, "%s/checkpoint.prev.json", out);
    (void)rename(a, b);
}

loom_status loom_run_ckpt_consolidate(const char *path, const char *out_file) {
    loom_run_ckpt *c = NULL;
    LOOM_CALL(loom_run_ckpt_open(path, &c));
    loom_status st = LOOM_OK;
    float *buf[3] = {NULL, NULL, NULL};
    char *state = NULL;
    loom_strbuf meta;
    loom_strbuf_init(&meta);
    LOOM_CHECK_GOTO(st, c->sharded, LOOM_ERR_INVALID_ARG, done, "%s is already a single-file checkpoint", c->path);
    loom_ckpt_section s[5];
    int ns = 0;
    LOOM_CALL_GOTO(st, loom_json_serialize(c->meta, &meta), done);
    s[ns++] = (loom_ckpt_section){"meta", meta.buf, (int64_t)meta.len, NULL, NULL};
    const loom_json *h = loom_json_get(c->doc, "state_hex");
    LOOM_CHECK_GOTO(st, h && h->type == LOOM_JSON_STRING, LOOM_ERR_FORMAT, done, "%s lacks state_hex", c->path);
    int64_t sb = (int64_t)strlen(h->string) / 2;
    state = malloc((size_t)sb + 1);
    LOOM_CHECK_GOTO(st, state != NULL, LOOM_ERR_NOMEM, done, "out of memory");
    LOOM_CALL_GOTO(st, hex_decode(h->string, state, sb), done);
    s[ns++] = (loom_ckpt_section){"state", state, sb, NULL, NULL};
    for (int k = 0; k < 3; k++) {
        if (!loom_run_ckpt_has(c, section_names[k])) continue;
        buf[k] = malloc((size_t)c->n * sizeof(float));
        LOOM_CHECK_GOTO(st, buf[k] != NULL, LOOM_ERR_NOMEM, done, "out of memory");
        LOOM_CALL_GOTO(st, loom_run_ckpt_read(c, section_names[k], 0, c->n, buf[k]), done);
        s[ns++] = (loom_ckpt_section){section_names[k], buf[k], c->n * 4, NULL, NULL};
    }
    LOOM_CALL_GOTO(st, loom_ckpt_write(out_file, s, ns), done);
done:
    for (int k = 0; k < 3; k++) free(buf[k]);
    free(state);
    loom_strbuf_free(&meta);
    loom_run_ckpt_close(&c);
    return st;
}
