/* loom ckpt info | consolidate: what a checkpoint holds (every checksum verified), and a sharded
 * checkpoint rewritten as one file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "loom/ckpt.h"

static int usage(int rc) {
    printf("usage: loom ckpt info DIR|FILE\n"
           "         verify a checkpoint's checksums (every shard of a sharded one) and print its metadata\n"
           "       loom ckpt consolidate DIR|checkpoint.json [--out FILE]\n"
           "         write a sharded checkpoint (N ranks) as one file (default DIR/checkpoint.bin), which\n"
           "         resumes on any number of ranks and which `loom export` and `loom generate` read\n");
    return rc;
}

static int info(const char *arg) {
    loom_run_ckpt *c = NULL;
    if (loom_run_ckpt_open(arg, &c) != LOOM_OK) return loom_cli_fail("ckpt");
    const int64_t n = loom_run_ckpt_size(c);
    float *buf = malloc((size_t)n * sizeof(float));
    if (!buf) {
        loom_run_ckpt_close(&c);
        fprintf(stderr, "loom ckpt: error: out of memory\n");
        return 1;
    }
    printf("checkpoint %s (%s, %d rank%s)\n", loom_run_ckpt_path(c), loom_run_ckpt_world(c) > 1 ? "sharded" : "single file",
           loom_run_ckpt_world(c), loom_run_ckpt_world(c) > 1 ? "s" : "");
    static const char *const sections[] = {"params", "optim.0", "optim.1", NULL};
    for (int i = 0; sections[i]; i++) {
        if (!loom_run_ckpt_has(c, sections[i])) continue;
        if (loom_run_ckpt_read(c, sections[i], 0, n, buf) != LOOM_OK) {
            free(buf);
            loom_run_ckpt_close(&c);
            return loom_cli_fail("ckpt");
        }
        printf("section %-8s %12lld bytes, checksum ok\n", sections[i], (long long)(n * 4));
    }
    free(buf);
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    if (loom_json_serialize(loom_run_ckpt_meta(c), &sb) == LOOM_OK) printf("meta %s\n", sb.buf);
    loom_strbuf_free(&sb);
    loom_run_ckpt_close(&c);
    return 0;
}

int loom_cmd_ckpt(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) return usage(0);
    if (argc < 3) return usage(2);
    if (!strcmp(argv[1], "info")) return info(argv[2]);
    if (!strcmp(argv[1], "consolidate")) {
        char out[4200] = "";
        for (int i = 3; i < argc; i++) {
            if (!strcmp(argv[i], "--out") && i + 1 < argc) snprintf(out, sizeof out, "%s", argv[++i]);
            else {
                fprintf(stderr, "loom ckpt consolidate: unknown argument '%s'\n", argv[i]);
                return 2;
            }
        }
        if (!out[0]) {
            struct stat sb;
            if (stat(argv[2], &sb) == 0 && S_ISDIR(sb.st_mode)) snprintf(out, sizeof out, "%s/checkpoint.bin", argv[2]);
            else {
                fprintf(stderr, "loom ckpt consolidate: give --out FILE when the input is a manifest\n");
                return 2;
            }
        }
        if (loom_run_ckpt_consolidate(argv[2], out) != LOOM_OK) return loom_cli_fail("ckpt");
        printf("wrote %s\n", out);
        return 0;
    }
    return usage(2);
}
