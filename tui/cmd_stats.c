/* cmd_stats.c - qscope stats: calibration statistics of every linear layer's
 * input and of every weight matrix, as a table, JSON, or terminal plots
 * (log-count histograms of |x| and per-channel absmax strips). */
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "../engine/calib.h"
#include "../engine/forward.h"
#include "../engine/model.h"
#include "cli.h"
#include "commands.h"

#define DEFAULT_CALIB "$QSCOPE_SHARED/data/debdoc-calib.txt, $QSCOPE_SHARED defaulting to ../shared"
#define LAYER_ALL INT_MIN

static common co;
static int o_samples = 128, o_seq_len = 512, o_seed = 0, o_plot, o_no_cache, o_no_weights;
static int o_layer = LAYER_ALL;
static float o_k = 20.0f, o_sigma = 6.0f;
static const char *o_tensor;

const opt *stats_opts(void)
{
	static const opt o[] = {
		{ "-m", "--model", OPT_STR, &co.model, "MODEL", "model (default " DEFAULT_MODEL ")" },
		{ "-z", "--tokenizer", OPT_STR, &co.tokenizer, "FILE", "llama2.c tokenizer.bin" },
		{ "-f", "--file", OPT_STR, &co.file, "TEXT", "calibration text (default " DEFAULT_CALIB ")" },
		{ NULL, "--samples", OPT_INT, &o_samples, "N", "calibration sequences (default 128)" },
		{ NULL, "--seq-len", OPT_INT, &o_seq_len, "L", "tokens per sequence, BOS first (default 512)" },
		{ "-s", "--seed", OPT_INT, &o_seed, "S", "seed of the random windows (default 0)" },
		{ NULL, "--outlier-k", OPT_FLOAT, &o_k, "K", "outlier channel: absmax > K x median channel absmax (default 20)" },
		{ NULL, "--sigma", OPT_FLOAT, &o_sigma, "S", "outlier value: |x| > S x the tensor's std (default 6)" },
		{ NULL, "--layer", OPT_INT, &o_layer, "L", "show only layer L (-1: output head and embeddings)" },
		{ NULL, "--tensor", OPT_STR, &o_tensor, "NAME", "show only tensors whose name contains NAME" },
		{ NULL, "--plot", OPT_FLAG, &o_plot, NULL, "draw histograms and per-channel absmax bars" },
		{ NULL, "--json", OPT_FLAG, &co.json, NULL, "print one JSON object on stdout (per-channel arrays included)" },
		{ NULL, "--no-cache", OPT_FLAG, &o_no_cache, NULL, "neither read nor write the statistics cache" },
		{ NULL, "--no-weights", OPT_FLAG, &o_no_weights, NULL, "skip the weight statistics" },
		{ "-t", "--threads", OPT_INT, &co.threads, "N", "threads (default: all cores)" },
		{ NULL, NULL, 0, NULL, NULL, NULL },
	};
	return o;
}

/* ---------------------------------------------------------------- progress */

typedef struct prog {
	int n_layers, tty;
	double t0;
	long last_layer;
} prog;

static int on_progress(void *user, long done, long total)
{
	prog *p = user;
	long per = total / (p->n_layers + 1);
	if (per < 1)
		per = 1;
	long layer = (done - 1) / per; /* 0..n_layers (n_layers: the head) */
	int end_of_layer = done % per == 0;
	if (p->tty) {
		char what[48];
		if (layer < p->n_layers)
			snprintf(what, sizeof(what), "layer %ld/%d", layer + 1, p->n_layers);
		else
			snprintf(what, sizeof(what), "output head");
		fprintf(stderr, "\rstats: calibrating %s, batch %ld/%ld (%.1f s)   ", what,
			(done - 1) % per + 1, per, cli_now() - p->t0);
		if (done == total)
			fputc('\n', stderr);
	} else if (end_of_layer && layer != p->last_layer) {
		if (layer < p->n_layers)
			fprintf(stderr, "stats: layer %ld/%d done (%.1f s)\n", layer + 1, p->n_layers,
				cli_now() - p->t0);
		else
			fprintf(stderr, "stats: output head done (%.1f s)\n", cli_now() - p->t0);
		p->last_layer = layer;
	}
	fflush(stderr);
	return 0;
}

/* ---------------------------------------------------------------- selection */

static int selected(const calib_stats *s)
{
	if (o_layer != LAYER_ALL && s->layer != (o_layer < 0 ? -1 : o_layer))
		return 0;
	if (o_tensor && !strstr(s->name, o_tensor))
		return 0;
	return 1;
}

/* Every statistic in display order: per layer its four sites and its seven
 * weights, then the head's input and the embedding/output weights. */
typedef struct item {
	const calib_stats *s;
	int weight;
} item;

/* ---------------------------------------------------------------- table */

static void fmt_channels(char *buf, size_t cap, const calib_stats *s, int max)
{
	size_t o = 0;
	buf[0] = 0;
	for (int i = 0; i < s->n_outlier_ch && i < max && o + 16 < cap; i++)
		o += (size_t)snprintf(buf + o, cap - o, "%s%d", i ? "," : "", s->outlier_ch[i]);
	if (s->n_outlier_ch > max && o + 16 < cap)
		snprintf(buf + o, cap - o, ",+%d", s->n_outlier_ch - max);
}

static void print_row(const calib_stats *s, int weight)
{
	char shape[40], ch[64];
	(void)weight;
	snprintf(shape, sizeof(shape), "%lld x %d", (long long)s->rows, s->cols);
	fmt_channels(ch, sizeof(ch), s, 5);
	double ratio = s->median_absmax > 0 ? s->absmax_all / s->median_absmax : 0;
	printf("%-24s %13s %9.4f %8.4f %9.2f %7.3f%s %6.1f %5d  %s\n", s->name, shape, s->absmax_all,
	       s->rms_all, s->kurtosis, 100.0 * s->outlier_frac, s->outlier_exact ? " " : "~",
	       ratio, s->n_outlier_ch, ch);
}

static void print_header(const char *title)
{
	printf("\n%s\n%-24s %13s %9s %8s %9s %8s %6s %5s  %s\n", title, "tensor", "shape", "absmax",
	       "rms", "kurtosis", ">Nsd %", "max/md", "outl", "outlier channels (largest first)");
}

/* ---------------------------------------------------------------- plots */

static const char *const blocks[9] = { " ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█" };

typedef struct term {
	int color, width;
} term;

static const char *col(const term *t, const char *code) { return t->color ? code : ""; }

/* Draw `rows` text rows of bars; level[i] in 0..rows*8, mark[i] picks the
 * highlight colour (0 none, 1 accent, 2 alert). */
static void draw_bars(const term *t, const int *level, const int *mark, int n, int rows,
		      const char *margin_top, const char *margin)
{
	for (int r = rows - 1; r >= 0; r--) {
		fputs(r == rows - 1 ? margin_top : margin, stdout);
		int cur = -1;
		for (int i = 0; i < n; i++) {
			int v = level[i] - r * 8;
			v = v < 0 ? 0 : v > 8 ? 8 : v;
			if (t->color && mark[i] != cur) {
				fputs(mark[i] == 2 ? "\033[31m" : mark[i] == 1 ? "\033[33m" : "\033[36m",
				      stdout);
				cur = mark[i];
			}
			fputs(blocks[v], stdout);
		}
		fputs(col(t, "\033[0m"), stdout);
		fputc('\n', stdout);
	}
}

static void plot_one(const term *t, const calib_stats *s, int weight)
{
	const int H = 4;
	printf("\n%s%s%s  (%lld x %d %s)  absmax %.4g, std %.4g, kurtosis %.2f\n",
	       col(t, "\033[1m"), s->name, col(t, "\033[0m"), (long long)s->rows, s->cols,
	       weight ? "weight: rows x input channels" : "activation: tokens x channels",
	       s->absmax_all, s->std, s->kurtosis);
	/* histogram of |x|, log counts; bins at or beyond sigma*std in yellow */
	int level[CALIB_HIST_BINS], mark[CALIB_HIST_BINS];
	int64_t mx = 0;
	for (int i = 0; i < CALIB_HIST_BINS; i++)
		mx = s->hist.bin[i] > mx ? s->hist.bin[i] : mx;
	double thr = s->sigma * s->std;
	for (int i = 0; i < CALIB_HIST_BINS; i++) {
		double v = mx > 0 ? log10(1.0 + (double)s->hist.bin[i]) / log10(1.0 + (double)mx) : 0;
		level[i] = (int)lround(v * H * 8);
		if (s->hist.bin[i] > 0 && level[i] == 0)
			level[i] = 1;
		mark[i] = calib_hist_edge(i + 1) > thr ? 1 : 0;
	}
	char top[32];
	snprintf(top, sizeof(top), "%9.2g ", (double)mx);
	printf("  |x| histogram, log count (%s%g sd = %.3g and beyond%s):\n",
	       col(t, "\033[33m"), (double)s->sigma, thr, col(t, "\033[0m"));
	draw_bars(t, level, mark, CALIB_HIST_BINS, H, top, "          ");
	printf("          ");
	static const char *const ticks[] = { "1e-4", "1e-3", "0.01", "0.1", "1", "10", "100", "1e3" };
	for (int d = 0; d < CALIB_HIST_BINS / CALIB_HIST_PER_DECADE; d++)
		printf("%-*s", CALIB_HIST_PER_DECADE, ticks[d]);
	printf("1e4\n          zero %lld, below 1e-4 %lld, above 1e4 %lld, non-finite %lld\n",
	       (long long)s->hist.zero, (long long)s->hist.under, (long long)s->hist.over,
	       (long long)s->hist.nonfinite);
	/* per-channel absmax, channels bucketed to the width, linear scale */
	int W = t->width - 10;
	if (W > s->cols)
		W = s->cols;
	if (W < 8)
		W = 8 < s->cols ? 8 : s->cols;
	int *lv = calloc((size_t)W, sizeof(int)), *mk = calloc((size_t)W, sizeof(int));
	float *bm = calloc((size_t)W, sizeof(float));
	char *isout = calloc((size_t)s->cols, 1);
	if (!lv || !mk || !bm || !isout)
		goto out;
	for (int i = 0; i < s->n_outlier_ch; i++)
		isout[s->outlier_ch[i]] = 1;
	for (int c = 0; c < s->cols; c++) {
		int b = (int)((long)c * W / s->cols);
		bm[b] = s->absmax[c] > bm[b] ? s->absmax[c] : bm[b];
		if (isout[c])
			mk[b] = 2;
	}
	for (int b = 0; b < W; b++) {
		lv[b] = s->absmax_all > 0 ? (int)lround(bm[b] / s->absmax_all * H * 8) : 0;
		if (bm[b] > 0 && lv[b] == 0)
			lv[b] = 1;
	}
	printf("  per-channel absmax, %d channels in %d columns (max per column; median %.3g, %s%d outlier%s > %g x median%s):\n",
	       s->cols, W, s->median_absmax, col(t, "\033[31m"), s->n_outlier_ch,
	       s->n_outlier_ch == 1 ? "" : "s", (double)s->outlier_k, col(t, "\033[0m"));
	snprintf(top, sizeof(top), "%9.3g ", s->absmax_all);
	draw_bars(t, lv, mk, W, H, top, "          ");
	printf("          ");
	for (int b = 0; b < W; b++)
		fputc(mk[b] ? '^' : ' ', stdout);
	char last[24];
	int ll = snprintf(last, sizeof(last), "ch %d", s->cols - 1);
	printf("\n          ch 0%*s\n", W - 4 > ll ? W - 4 : ll + 1, last);
	if (s->n_outlier_ch) {
		char ch[256];
		fmt_channels(ch, sizeof(ch), s, 16);
		printf("          outlier channels: %s\n", ch);
	}
out:
	free(lv);
	free(mk);
	free(bm);
	free(isout);
}

/* ---------------------------------------------------------------- JSON */

static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *jfloats(const float *v, int64_t n)
{
	json_t *a = json_array();
	for (int64_t i = 0; i < n; i++)
		json_array_append_new(a, jnum(v[i]));
	return a;
}

static json_t *jstats(const calib_stats *s, int weight)
{
	json_t *o = json_object();
	json_object_set_new(o, "name", json_string(s->name));
	json_object_set_new(o, "kind", json_string(weight ? "weight" : "activation"));
	json_object_set_new(o, "layer", json_integer(s->layer));
	json_object_set_new(o, "site", weight ? json_null() : json_string(calib_site_name(s->site)));
	json_object_set_new(o, "rows", json_integer(s->rows));
	json_object_set_new(o, "cols", json_integer(s->cols));
	json_object_set_new(o, "absmax", jnum(s->absmax_all));
	json_object_set_new(o, "rms", jnum(s->rms_all));
	json_object_set_new(o, "mean", jnum(s->mean));
	json_object_set_new(o, "std", jnum(s->std));
	json_object_set_new(o, "kurtosis", jnum(s->kurtosis));
	json_object_set_new(o, "median_channel_absmax", jnum(s->median_absmax));
	json_object_set_new(o, "max_channel_ratio",
			    jnum(s->median_absmax > 0 ? s->absmax_all / s->median_absmax : 0));
	json_t *oc = json_array(), *ov = json_array();
	for (int i = 0; i < s->n_outlier_ch; i++) {
		json_array_append_new(oc, json_integer(s->outlier_ch[i]));
		json_array_append_new(ov, jnum(s->absmax[s->outlier_ch[i]]));
	}
	json_object_set_new(o, "outlier_channels", oc);
	json_object_set_new(o, "outlier_channel_absmax", ov);
	json_object_set_new(o, "outlier_values", json_integer(s->n_outlier_vals));
	json_object_set_new(o, "outlier_frac", jnum(s->outlier_frac));
	json_object_set_new(o, "outlier_exact", json_boolean(s->outlier_exact));
	json_t *h = json_object(), *hb = json_array();
	for (int i = 0; i < CALIB_HIST_BINS; i++)
		json_array_append_new(hb, json_integer(s->hist.bin[i]));
	json_object_set_new(h, "counts", hb);
	json_object_set_new(h, "zero", json_integer(s->hist.zero));
	json_object_set_new(h, "under", json_integer(s->hist.under));
	json_object_set_new(h, "over", json_integer(s->hist.over));
	json_object_set_new(h, "nonfinite", json_integer(s->hist.nonfinite));
	json_object_set_new(o, "hist", h);
	json_object_set_new(o, "channel_absmax", jfloats(s->absmax, s->cols));
	json_object_set_new(o, "channel_mean_abs", jfloats(s->mean_abs, s->cols));
	json_object_set_new(o, "channel_rms", jfloats(s->rms, s->cols));
	if (s->row_absmax)
		json_object_set_new(o, "row_absmax", jfloats(s->row_absmax, s->rows));
	return o;
}

/* ---------------------------------------------------------------- command */

static int term_width(void)
{
	struct winsize ws;
	if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
		return ws.ws_col;
	const char *c = getenv("COLUMNS");
	int w = c ? atoi(c) : 0;
	return w >= 20 && w <= 1000 ? w : 80;
}

int cmd_stats(int argc, char **argv)
{
	int rc = cli_parse_opts("stats", argc, argv, stats_opts());
	if (rc)
		return rc;
	if (o_samples < 1 || o_seq_len < 2 || o_seed < 0 || !(o_k > 0) || !(o_sigma > 0) ||
	    (long)o_samples * o_seq_len > (1L << 31) || (o_layer != LAYER_ALL && o_layer < -1)) {
		fprintf(stderr, "qscope stats: need --samples >= 1, --seq-len >= 2, --seed >= 0, "
				"--outlier-k > 0, --sigma > 0, --layer >= -1\n");
		return EXIT_USAGE;
	}
	const char *file = co.file ? co.file : cli_default_calib();
	model *m;
	if ((rc = cli_open_model(&co, &m)))
		return rc;
	char *text = NULL;
	calib_set *set = NULL;
	calib_stats *ws = NULL;
	item *items = NULL;
	int nw = 0;
	if (o_layer != LAYER_ALL && o_layer >= m->cfg.n_layers) {
		fprintf(stderr, "qscope stats: --layer %d: the model has %d layers\n", o_layer,
			m->cfg.n_layers);
		rc = EXIT_USAGE;
		goto out;
	}
	if (m->cfg.ctx > 0 && o_seq_len > m->cfg.ctx) {
		fprintf(stderr, "qscope stats: --seq-len %d exceeds the model's context %d\n",
			o_seq_len, m->cfg.ctx);
		rc = EXIT_USAGE;
		goto out;
	}
	size_t len;
	if ((rc = cli_read_text(file, &text, &len)))
		goto out;
	calib_opts o;
	calib_opts_default(&o);
	o.n_samples = o_samples;
	o.seq_len = o_seq_len;
	o.seed = (uint64_t)o_seed;
	o.outlier_k = o_k;
	o.sigma = o_sigma;
	o.xtx = 0;
	char dir[1024];
	const char *cache = NULL;
	qs_error err = { 0 };
	if (!o_no_cache) {
		if (calib_cache_dir(dir, sizeof(dir), &err) == 0)
			cache = dir;
		else
			fprintf(stderr, "qscope stats: warning: %s\n", err.msg);
	}
	prog p = { m->cfg.n_layers, isatty(STDERR_FILENO), cli_now(), -1 };
	calib_cache_info ci;
	fprintf(stderr, "stats: %s, %d x %d calibration tokens from %s, seed %d, %d threads\n",
		m->path, o_samples, o_seq_len, file, o_seed, fwd_threads());
	if (calib_collect(m, text, len, &o, cache, on_progress, &p, &set, &ci, &err)) {
		fprintf(stderr, "qscope stats: %s: %s\n", file, err.msg);
		rc = EXIT_INPUT;
		goto out;
	}
	double t_calib = cli_now() - p.t0;
	if (ci.warning[0])
		fprintf(stderr, "qscope stats: warning: %s\n", ci.warning);
	fprintf(stderr, "stats: activations %s in %.2f s%s%s\n",
		ci.hit ? "loaded from the cache" : "computed", t_calib,
		ci.hit || ci.saved ? ": " : "", ci.hit || ci.saved ? ci.path : "");

	/* weights */
	const model_tensor *wl[4096];
	int n_wl = o_no_weights ? 0 : calib_weight_list(m, wl, 4096);
	n_wl = n_wl > 4096 ? 4096 : n_wl;
	double t1 = cli_now();
	if (n_wl && !(ws = calloc((size_t)n_wl, sizeof(calib_stats)))) {
		fprintf(stderr, "qscope stats: out of memory\n");
		rc = EXIT_INPUT;
		goto out;
	}
	for (; nw < n_wl; nw++) {
		if (calib_weight_stats(wl[nw], o_k, o_sigma, &ws[nw], &err)) {
			fprintf(stderr, "qscope stats: %s\n", err.msg);
			rc = EXIT_INPUT;
			goto out;
		}
	}
	if (n_wl)
		fprintf(stderr, "stats: %d weight matrices in %.2f s\n", nw, cli_now() - t1);

	/* display order */
	int cap = (m->cfg.n_layers + 1) * CALIB_MAX_SITES + nw + 4, n = 0;
	if (!(items = calloc((size_t)cap, sizeof(item)))) {
		rc = EXIT_INPUT;
		goto out;
	}
	int wi = 0;
	for (int l = 0; l <= m->cfg.n_layers; l++) {
		const calib_layer_stats *ls = l < m->cfg.n_layers ? &set->layers[l] : &set->head;
		int layer = l < m->cfg.n_layers ? l : -1;
		for (int i = 0; i < ls->n_sites; i++)
			if (selected(&ls->site[i]))
				items[n++] = (item){ &ls->site[i], 0 };
		for (; wi < nw && (ws[wi].layer == layer || layer < 0); wi++)
			if (selected(&ws[wi]))
				items[n++] = (item){ &ws[wi], 1 };
	}
	if (n == 0) {
		fprintf(stderr, "qscope stats: no tensor matches the selection\n");
		rc = EXIT_USAGE;
		goto out;
	}

	if (co.json) {
		json_t *root = json_object(), *acts = json_array(), *wts = json_array();
		char key[24];
		snprintf(key, sizeof(key), "%016llx", (unsigned long long)set->key);
		json_object_set_new(root, "model", json_string(m->path));
		json_object_set_new(root, "calib_file", json_string(file));
		json_object_set_new(root, "text_tokens", json_integer(set->text_tokens));
		json_object_set_new(root, "samples", json_integer(o_samples));
		json_object_set_new(root, "seq_len", json_integer(o_seq_len));
		json_object_set_new(root, "seed", json_integer(o_seed));
		json_object_set_new(root, "outlier_k", json_real(o_k));
		json_object_set_new(root, "sigma", json_real(o_sigma));
		json_object_set_new(root, "key", json_string(key));
		json_object_set_new(root, "cache", json_string(!cache ? "off" : ci.hit ? "hit" : "miss"));
		json_object_set_new(root, "seconds_calib", json_real(t_calib));
		json_t *edges = json_array();
		for (int i = 0; i <= CALIB_HIST_BINS; i++)
			json_array_append_new(edges, json_real(calib_hist_edge(i)));
		json_object_set_new(root, "hist_edges", edges);
		for (int i = 0; i < n; i++)
			json_array_append_new(items[i].weight ? wts : acts,
					      jstats(items[i].s, items[i].weight));
		json_object_set_new(root, "activations", acts);
		json_object_set_new(root, "weights", wts);
		rc = cli_dump_json(root);
		goto out;
	}

	term t = { isatty(STDOUT_FILENO) && !getenv("NO_COLOR"), term_width() };
	printf("calibration: %s, %lld tokens; %d x %d tokens sampled (seed %d), BOS first\n",
	       file, (long long)set->text_tokens, o_samples, o_seq_len, o_seed);
	printf("outl: channels whose absmax > %g x the median channel absmax (max/md: the largest "
	       "ratio);\n>Nsd %%: values with |x| > %g x the tensor's std (~: a lower bound)\n",
	       (double)o_k, (double)o_sigma);
	if (o_plot) {
		for (int i = 0; i < n; i++)
			plot_one(&t, items[i].s, items[i].weight);
	} else {
		for (int w = 0; w < 2; w++) {
			int any = 0;
			for (int i = 0; i < n; i++)
				any |= items[i].weight == w;
			if (!any)
				continue;
			print_header(w ? "weights (rows = output features, channels = input features)"
				       : "activations (inputs of the linear layers; rows = tokens)");
			for (int i = 0; i < n; i++)
				if (items[i].weight == w)
					print_row(items[i].s, w);
		}
	}
out:
	free(items);
	for (int i = 0; i < nw; i++)
		calib_stats_release(&ws[i]);
	free(ws);
	calib_set_free(set);
	free(text);
	model_free(m);
	return rc;
}
