/* loom plot: the loss (train and validation) and throughput of one or more metrics logs as a PNG or SVG
 * chart, drawn by gnuplot (Debian's gnuplot-nox). Several logs overlay, labelled by file name, e.g. the
 * seeds of one recipe. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "loom/json.h"

static void plot_help(void) {
    printf("usage: loom plot METRICS.jsonl... [--out FILE.png|FILE.svg] [--title TEXT]\n"
           "Draws training loss, validation loss and tokens/s against the step (gnuplot; apt-get install gnuplot-nox).\n"
           "Default output: the first log's directory, loss.png.\n");
}

/* Writes "step loss tokens_per_sec" and "step val_loss" data files for one log. Returns rows read. */
static long extract(const char *path, FILE *train, FILE *val, double *tok_sum, long *tok_n) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "loom plot: error: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    long rows = 0, lineno = 0;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        loom_json *j = NULL;
        if (loom_json_parse(line, strlen(line), &j) != LOOM_OK) {
            fprintf(stderr, "loom plot: warning: %s line %ld is not JSON; skipped\n", path, lineno);
            continue;
        }
        const loom_json *st = loom_json_get(j, "step"), *l = loom_json_get(j, "loss"),
                        *v = loom_json_get(j, "val_loss"), *tp = loom_json_get(j, "tokens_per_sec");
        if (st && st->type == LOOM_JSON_NUMBER) {
            if (l && l->type == LOOM_JSON_NUMBER) {
                fprintf(train, "%g %.9g %g\n", st->number, l->number,
                        tp && tp->type == LOOM_JSON_NUMBER ? tp->number : 0.0);
                if (tp && tp->type == LOOM_JSON_NUMBER) {
                    *tok_sum += tp->number;
                    (*tok_n)++;
                }
                rows++;
            }
            if (v && v->type == LOOM_JSON_NUMBER) fprintf(val, "%g %.9g\n", st->number, v->number);
        }
        loom_json_free(&j);
    }
    free(line);
    fclose(f);
    return rows;
}

static void gp_quote(FILE *gp, const char *s) {
    fputc('"', gp);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', gp);
        fputc(*s, gp);
    }
    fputc('"', gp);
}

int loom_cmd_plot(int argc, char **argv) {
    const char *out = NULL, *title = "loom training";
    const char *logs[64];
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            plot_help();
            return 0;
        } else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--title") && i + 1 < argc) title = argv[++i];
        else if (argv[i][0] == '-') {
            fprintf(stderr, "loom plot: unknown option '%s'\n", argv[i]);
            return 2;
        } else if (n < 64) logs[n++] = argv[i];
    }
    if (n == 0) {
        plot_help();
        return 2;
    }
    char def[4200];
    if (!out) {
        snprintf(def, sizeof def, "%s", logs[0]);
        char *slash = strrchr(def, '/');
        if (slash) strcpy(slash + 1, "loss.png");
        else snprintf(def, sizeof def, "loss.png");
        out = def;
    }
    size_t ol = strlen(out);
    int svg = ol > 4 && !strcmp(out + ol - 4, ".svg");
    if (!svg && !(ol > 4 && !strcmp(out + ol - 4, ".png"))) {
        fprintf(stderr, "loom plot: error: --out must end in .png or .svg, got '%s'\n", out);
        return 1;
    }
    if (system("command -v gnuplot > /dev/null 2>&1") != 0) {
        fprintf(stderr, "loom plot: error: gnuplot not found (apt-get install gnuplot-nox)\n");
        return 1;
    }
    char dir[] = "/tmp/loom-plot-XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "loom plot: error: cannot create a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    double tok_sum = 0;
    long tok_n = 0, total = 0;
    for (int i = 0; i < n; i++) {
        char tp[256], vp[256];
        snprintf(tp, sizeof tp, "%s/train%d.dat", dir, i);
        snprintf(vp, sizeof vp, "%s/val%d.dat", dir, i);
        FILE *t = fopen(tp, "w"), *v = fopen(vp, "w");
        long r = (t && v) ? extract(logs[i], t, v, &tok_sum, &tok_n) : -1;
        if (t) fclose(t);
        if (v) fclose(v);
        if (r < 0) return 1;
        total += r;
    }
    if (total == 0) {
        fprintf(stderr, "loom plot: error: no training steps in %s%s\n", logs[0], n > 1 ? " and the others" : "");
        return 1;
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "gnuplot > %s/gnuplot.log 2>&1", dir);
    FILE *gp = popen(cmd, "w");
    if (!gp) {
        fprintf(stderr, "loom plot: error: cannot run gnuplot\n");
        return 1;
    }
    fprintf(gp, "set terminal %s size 1200,520 font 'DejaVu Sans,11'\nset output ", svg ? "svg dynamic noenhanced background rgb 'white'" : "pngcairo noenhanced");
    gp_quote(gp, out);
    fprintf(gp, "\nset multiplot layout 1,2 title ");
    gp_quote(gp, title);
    fprintf(gp, "\nset grid lc rgb '#dddddd'\nset key top right\nset xlabel 'step'\nset ylabel 'loss (nats/token)'\n"
                "set title 'loss'\nplot ");
    for (int i = 0; i < n; i++) {
        const char *base = strrchr(logs[i], '/') ? strrchr(logs[i], '/') + 1 : logs[i];
        char label[600];
        snprintf(label, sizeof label, "%s%s", n > 1 ? logs[i] : "", n > 1 ? "" : base);
        fprintf(gp, "%s'%s/train%d.dat' using 1:2 with lines lw 1.5 lc %d title ", i ? ", " : "", dir, i, i + 1);
        char tl[700];
        snprintf(tl, sizeof tl, "train %s", label);
        gp_quote(gp, tl);
        fprintf(gp, ", '%s/val%d.dat' using 1:2 with linespoints pt 7 ps 1.2 lw 2.5 lc %d title ", dir, i, n + i + 1);
        snprintf(tl, sizeof tl, "val %s", label);
        gp_quote(gp, tl);
    }
    fprintf(gp, "\nset title 'throughput (mean %.0f tokens/s)'\nset ylabel 'tokens/s'\nset yrange [0:*]\nplot ",
            tok_n ? tok_sum / (double)tok_n : 0.0);
    for (int i = 0; i < n; i++)
        fprintf(gp, "%s'%s/train%d.dat' using 1:3 with lines lw 1 lc %d notitle", i ? ", " : "", dir, i, i + 1);
    fprintf(gp, "\nunset multiplot\n");
    int rc = pclose(gp);
    char logp[300];
    snprintf(logp, sizeof logp, "%s/gnuplot.log", dir);
    if (rc != 0 || access(out, F_OK) != 0) {
        fprintf(stderr, "loom plot: error: gnuplot failed (see %s)\n", logp);
        return 1;
    }
    char rm[320];
    snprintf(rm, sizeof rm, "rm -rf '%s'", dir);
    if (system(rm) != 0) fprintf(stderr, "loom plot: warning: could not remove %s\n", dir);
    printf("wrote %s (%ld steps from %d log%s)\n", out, total, n, n > 1 ? "s" : "");
    return 0;
}
