/* loom ckpt info: what a checkpoint holds, after verifying every section's checksum. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "loom/ckpt.h"

int loom_cmd_ckpt(int argc, char **argv) {
    if (argc < 3 || strcmp(argv[1], "info") != 0) {
        printf("usage: loom ckpt info DIR|FILE   verify a checkpoint's checksums and print its metadata\n");
        return argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? 0 : 2;
    }
    char path[4200];
    struct stat sb;
    if (stat(argv[2], &sb) == 0 && S_ISDIR(sb.st_mode)) snprintf(path, sizeof path, "%s/checkpoint.bin", argv[2]);
    else snprintf(path, sizeof path, "%s", argv[2]);
    loom_ckpt_reader *r;
    if (loom_ckpt_open(path, &r) != LOOM_OK) return loom_cli_fail("ckpt");
    char *meta = NULL;
    if (loom_ckpt_read_text(r, "meta", &meta) != LOOM_OK) {
        loom_ckpt_close(&r);
        return loom_cli_fail("ckpt");
    }
    static const char *const sections[] = {"state", "params", "optim.0", "optim.1", NULL};
    for (int i = 0; sections[i]; i++) {
        int64_t n = loom_ckpt_section_size(r, sections[i]);
        if (n < 0) continue;
        void *buf = malloc((size_t)n + 1);
        if (!buf || loom_ckpt_read(r, sections[i], buf, n) != LOOM_OK) {
            free(buf);
            free(meta);
            loom_ckpt_close(&r);
            return loom_cli_fail("ckpt");
        }
        printf("section %-8s %12lld bytes, checksum ok\n", sections[i], (long long)n);
        free(buf);
    }
    printf("meta %s\n", meta);
    free(meta);
    loom_ckpt_close(&r);
    return 0;
}
