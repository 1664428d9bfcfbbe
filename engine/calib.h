/* calib.h - calibration: what the inputs of every linear layer (and every
 * weight matrix) look like, measured on a sample of text, streamed layer by
 * layer so memory holds one layer's statistics at a time.
 *
 * Four pieces, usable on their own:
 *
 *   calib_sample_*  draw n_seq windows of seq_len tokens from a tokenized text
 *                   at seeded random offsets (GPTQ's sampling), BOS first.
 *   calib_acc       a streaming accumulator for one activation matrix X
 *                   (rows = tokens, cols = channels): per-channel absmax,
 *                   mean |x|, RMS; per-tensor mean, std, kurtosis; the
 *                   fraction of |x| > sigma*std; a log-spaced histogram of
 *                   |x|; outlier channels; optionally X^T X (with BLAS ssyrk).
 *   calib_stream    the residual stream of all calibration sequences, pushed
 *                   through the model one layer at a time in batches, with a
 *                   capture hook seeing each batch's input at each linear
 *                   site. GPTQ-style quantizers drive it themselves: run a
 *                   layer without committing to collect sub-layer inputs,
 *                   change the layer's weights, run it again with commit so
 *                   the next layer sees the quantized layer's output.
 *   calib_run       the loop above with one calib_acc per site, handing each
 *                   finished layer's statistics (with X^T X if asked) to a
 *                   callback and freeing them; calib_collect keeps the
 *                   statistics (without X^T X) of every layer and caches
 *                   them on disk (calib_cache.c).
 *
 * Weights get the same statistics (minus X^T X) plus per-row absmax from
 * calib_weight_stats.
 *
 * The library never prints. Progress and cancellation go through
 * qs_progress_fn callbacks (nonzero return: QS_ECANCEL). */
#ifndef QS_CALIB_H
#define QS_CALIB_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "forward.h"
#include "model.h"

/* ---------------------------------------------------------------- settings */

typedef struct calib_opts {
	int n_samples;   /* calibration sequences (128) */
	int seq_len;     /* tokens per sequence, BOS included (512) */
	uint64_t seed;   /* window offsets (0) */
	int batch;       /* sequences per forward batch (8); does not change results */
	float outlier_k; /* outlier channel: absmax > k * median channel absmax (20) */
	float sigma;     /* outlier value: |x| > sigma * per-tensor std (6) */
	int xtx;         /* calib_run: accumulate X^T X per site (1) */
	int raw_windows; /* 1: windows as they are in the text (GPTQ's reference);
			  * 0: first token replaced by BOS (0) */
} calib_opts;

void calib_opts_default(calib_opts *o);

/* ---------------------------------------------------------------- sampling */

/* Fill tokens (n_seq, seq_len), caller-allocated, with windows of ids: window
 * s starts at offset u_s drawn uniformly from [0, n_ids - seq_len] by a
 * splitmix64 generator seeded with seed, and its first token is replaced by
 * bos (as llama.cpp's perplexity protocol does for each chunk), so every
 * sequence starts like a document; bos < 0 keeps the windows as they are. Windows may overlap. starts (n_seq) may be
 * NULL. Error if the text has fewer than seq_len tokens. */
int calib_sample_ids(const int *ids, size_t n_ids, int bos, int n_seq, int seq_len,
		     uint64_t seed, int *tokens, size_t *starts, qs_error *err);

/* Tokenize text (len bytes, BOS first) with the model's tokenizer and sample
 * o->n_samples windows of o->seq_len tokens. *tokens is malloc'd
 * (n_samples, seq_len), caller frees; *n_text_tokens (may be NULL) gets the
 * text's token count. */
int calib_sample_text(const model *m, const char *text, size_t len, const calib_opts *o,
		      int **tokens, size_t *n_text_tokens, qs_error *err);

/* ---------------------------------------------------------------- statistics */

#define CALIB_HIST_BINS 64
#define CALIB_HIST_PER_DECADE 8
#define CALIB_HIST_LO 1e-4 /* lower edge of bin 0 */
#define CALIB_HIST_HI 1e4  /* upper edge of the last bin */

/* A histogram of |x|: bin i counts CALIB_HIST_LO * 10^(i/8) <= |x| <
 * CALIB_HIST_LO * 10^((i+1)/8) (edges as rounded to float, see
 * calib_hist_edge). Unsigned on purpose: the sign is nearly symmetric and the
 * quantization question is the dynamic range of |x|. */
typedef struct calib_hist {
	int64_t zero;       /* x == 0 (either sign) */
	int64_t under;      /* 0 < |x| < CALIB_HIST_LO */
	int64_t over;       /* |x| >= CALIB_HIST_HI */
	int64_t nonfinite;  /* inf or nan (also poison the moments) */
	int64_t bin[CALIB_HIST_BINS];
} calib_hist;

/* Lower edge of bin i (0..CALIB_HIST_BINS; the last is the upper edge). */
float calib_hist_edge(int i);
/* The bin of one value: -1 zero, -2 under, -3 over, -4 nonfinite, else 0..63. */
int calib_hist_bin(float x);

/* Statistics of one matrix X (rows, cols): an activation site's input (rows =
 * tokens) or a weight (rows = output features, cols = input features, so a
 * "channel" is an input channel in both cases). Arrays are malloc'd and
 * owned; release with calib_stats_release. */
typedef struct calib_stats {
	char name[64];         /* "blk.3.ffn_down.in", "output.in", "blk.3.ffn_down.weight" */
	int layer;             /* block index, -1 for the output head / embeddings */
	int site;              /* enum fwd_site, or -1 for a weight */
	int64_t rows;          /* n: rows accumulated */
	int cols;              /* channels */
	float *absmax;         /* (cols) max |x| per channel */
	float *mean_abs;       /* (cols) mean |x| per channel */
	float *rms;            /* (cols) sqrt(mean x^2) per channel */
	float *row_absmax;     /* (rows) per row, weights only; NULL for activations */
	double mean, std;      /* over all values (population std) */
	double kurtosis;       /* Pearson: E[(x-mean)^4] / std^4 (3 for a Gaussian) */
	double absmax_all;     /* max |x| over the tensor */
	double rms_all;        /* sqrt(mean x^2) over the tensor */
	double median_absmax;  /* median of absmax[] (mean of the middle two if even) */
	float outlier_k;       /* setting used */
	int n_outlier_ch;      /* channels with absmax > outlier_k * median_absmax */
	int *outlier_ch;       /* (n_outlier_ch) channel indices, largest absmax first */
	float sigma;           /* setting used */
	int64_t n_outlier_vals; /* values with |x| > sigma * std */
	double outlier_frac;   /* n_outlier_vals / (rows * cols) */
	int outlier_exact;     /* 1: counted exactly; 0: a lower bound (see calib.c) */
	calib_hist hist;
	double *xtx;           /* (cols, cols) X^T X, symmetric, or NULL */
} calib_stats;

void calib_stats_release(calib_stats *s);

/* (Re)compute median_absmax and the outlier channel list of s for a new k
 * from s->absmax (no data needed: a cached result serves any k). */
int calib_stats_outlier_channels(calib_stats *s, float k, qs_error *err);

/* The streaming accumulator. calib_acc_add may be called any number of times
 * with blocks of rows; calib_acc_finish moves the result into *out (which the
 * caller releases) and leaves the accumulator empty but reusable only after
 * calib_acc_free + calib_acc_new. X^T X is summed per block with ssyrk in
 * float and across blocks in double. */
typedef struct calib_acc calib_acc;

calib_acc *calib_acc_new(int cols, float outlier_k, float sigma, int want_xtx, qs_error *err);
void calib_acc_free(calib_acc *a);
/* x (rows, cols), row-major, borrowed for the call. */
int calib_acc_add(calib_acc *a, const float *x, int64_t rows, qs_error *err);
int calib_acc_finish(calib_acc *a, calib_stats *out, qs_error *err);
int calib_acc_cols(const calib_acc *a);

/* Same statistics for one weight tensor (dequantized row by row with the
 * type's to_float), plus row_absmax. name/layer taken from the tensor. */
int calib_weight_stats(const model_tensor *t, float outlier_k, float sigma, calib_stats *out,
		       qs_error *err);

/* The model's matrices in a fixed order: for each layer wq wk wv wo w_gate
 * w_up w_down, then token_embd and output (omitted when tied). Writes up to
 * cap borrowed pointers; returns how many there are. */
int calib_weight_list(const model *m, const model_tensor **list, int cap);

/* "attn_qkv", "attn_output", "ffn_gate_up", "ffn_down", "output". */
const char *calib_site_name(int site);
/* Columns of a site's input for this model. */
int calib_site_cols(const model_config *c, int site);

/* ---------------------------------------------------------------- streaming */

typedef struct calib_stream calib_stream;

/* Embed tokens (n_seq, seq_len) into the residual stream (n_seq * seq_len,
 * dim) and make a forward context for batches of `batch` sequences. The
 * model must outlive the stream; tokens are copied. A stream larger than
 * CALIB_STREAM_MEM_MAX bytes lives in an unlinked temporary file ($TMPDIR,
 * else /tmp) read and written one batch at a time, so memory holds one
 * batch of it (the design rule: memory scales with a layer, not with the
 * calibration set); if no temporary file can be made it is kept in memory. */
#define CALIB_STREAM_MEM_MAX ((size_t)16 << 20)
calib_stream *calib_stream_new(const model *m, const int *tokens, int n_seq, int seq_len,
			       int batch, qs_error *err);
void calib_stream_free(calib_stream *s);

/* The next layer calib_stream_layer runs (0..n_layers; n_layers means only
 * the head is left). */
int calib_stream_next(const calib_stream *s);
int calib_stream_batches(const calib_stream *s);
/* Copy rows [row0, row0 + n_rows) of the residual stream entering layer
 * calib_stream_next (rows = tokens, sequence by sequence) into dst. */
int calib_stream_read(calib_stream *s, size_t row0, size_t n_rows, float *dst, qs_error *err);
/* Is the residual stream in a temporary file? ($QSCOPE_CALIB_STREAM_MEM,
 * in bytes, overrides CALIB_STREAM_MEM_MAX: 0 always uses a file.) */
int calib_stream_in_file(const calib_stream *s);
/* The forward context the stream runs on (borrowed). */
fwd_ctx *calib_stream_fwd(calib_stream *s);

/* Run layer calib_stream_next(s) over all sequences, batch by batch, calling
 * cap (may be NULL) with (layer, site, x, rows = batch_seqs * seq_len, cols)
 * at each of the layer's four sites for each batch. With commit the layer's
 * output replaces the residual stream and the stream advances to the next
 * layer; without, the stream is left as it was (a pass that only collects
 * inputs, e.g. after an earlier sub-layer's weights were replaced: the
 * forward pass reads the weights from the model's tensors at each call).
 * progress gets (batches done, batches) after each batch. A nonzero return
 * from cap or progress stops with QS_ECANCEL; the stream is then unusable
 * (its residual is half updated) and must be freed. */
int calib_stream_layer(calib_stream *s, int commit, fwd_capture_fn cap, void *user,
		       qs_progress_fn progress, void *puser, qs_error *err);
/* After the last layer: the final norm, capturing FWD_SITE_OUTPUT (layer -1)
 * for every batch. No logits are computed. */
int calib_stream_head(calib_stream *s, fwd_capture_fn cap, void *user, qs_progress_fn progress,
		      void *puser, qs_error *err);

/* ---------------------------------------------------------------- whole runs */

#define CALIB_MAX_SITES 4

/* One layer's statistics: site[i] for fwd_site i (QKV, ATTN_OUT, FFN_IN,
 * FFN_DOWN); for the output head (layer -1) n_sites is 1 and site[0] is
 * FWD_SITE_OUTPUT. */
typedef struct calib_layer_stats {
	int layer;
	int n_sites;
	calib_stats site[CALIB_MAX_SITES];
} calib_layer_stats;

void calib_layer_release(calib_layer_stats *ls);

/* Called once per finished layer, in order 0..n_layers-1 and then -1 (the
 * output head). st is borrowed for the call: its arrays (and X^T X) are freed
 * afterwards; calib_layer_take moves them out if the callee wants to keep
 * them. Nonzero return stops with QS_ECANCEL. */
typedef int (*calib_layer_fn)(void *user, int layer, calib_layer_stats *st);
/* Move st's contents into *dst (st is left empty). */
void calib_layer_take(calib_layer_stats *dst, calib_layer_stats *st);

/* Stream tokens (n_seq, seq_len) through the model with one accumulator per
 * site (X^T X when o->xtx). progress gets (batches done, batches total) over
 * all layers and the head. */
int calib_run(const model *m, const int *tokens, int n_seq, int seq_len, const calib_opts *o,
	      calib_layer_fn on_layer, void *user, qs_progress_fn progress, void *puser,
	      qs_error *err);

/* Every layer's activation statistics, without X^T X. */
typedef struct calib_set {
	calib_opts opts;            /* settings used (xtx 0) */
	uint64_t key;               /* calib_key of model, text and settings */
	int64_t text_tokens;        /* tokens in the calibration text */
	int n_layers;
	calib_layer_stats *layers;  /* (n_layers) */
	calib_layer_stats head;     /* layer -1: input of the output head */
} calib_set;

void calib_set_free(calib_set *s);

/* Where a cache lives and what happened to it. */
typedef struct calib_cache_info {
	int hit;             /* loaded from the cache */
	int saved;           /* computed and written */
	char path[1024];     /* the cache file (empty without a cache) */
	char warning[768];   /* non-empty: a cache problem that was survived */
} calib_cache_info;

/* Sample (calib_sample_text), run (calib_run with xtx off) and keep every
 * layer's statistics. With cache_dir non-NULL, first look for a valid cache
 * file for calib_key(...) there and use it (recomputing the outlier channels
 * if o->outlier_k differs from the file's); otherwise compute and write it
 * (atomically). A missing, corrupt or unwritable cache is not an error: it
 * is reported in info->warning and the statistics are computed. *out is
 * caller-freed with calib_set_free. info may be NULL. */
int calib_collect(const model *m, const char *text, size_t len, const calib_opts *o,
		  const char *cache_dir, qs_progress_fn progress, void *puser, calib_set **out,
		  calib_cache_info *info, qs_error *err);

/* ---------------------------------------------------------------- cache (calib_cache.c) */

/* 64-bit hash (XXH64's algorithm, seeded) of n bytes; continue a hash by
 * passing the previous value as seed. */
uint64_t calib_hash64(const void *data, size_t n, uint64_t seed);

/* The cache key: every tensor's name, type, shape and bytes; the config; the
 * calibration text; n_samples, seq_len, seed, sigma and the histogram
 * layout; and the cache format version. Not outlier_k (outlier channels are
 * recomputed from the cached per-channel absmax, so --outlier-k never forces
 * a new calibration), not batch or threads (they change only float
 * rounding) and not xtx (the cache holds no X^T X). */
uint64_t calib_key(const model *m, const char *text, size_t len, const calib_opts *o);

/* The cache folder: $QSCOPE_CACHE, else $XDG_CACHE_HOME/qscope, else
 * $HOME/.cache/qscope. Not created here. */
int calib_cache_dir(char *buf, size_t cap, qs_error *err);
/* mkdir -p of the folder part of path (for cache files). */
int calib_make_parents(const char *path, qs_error *err);
/* dir/calib-<key as 16 hex digits>.bin */
int calib_cache_path(const char *dir, uint64_t key, char *buf, size_t cap, qs_error *err);

/* Write s to path atomically (temporary file, fsync, rename), creating dir
 * components as needed. */
int calib_cache_save(const char *path, const calib_set *s, qs_error *err);
/* Read and validate path (magic, version, key, sizes, checksum, every count
 * against the model's shapes). Returns 1 and *out on success, 0 when there
 * is no such file, a negative code (err filled, nothing allocated) when the
 * file is invalid. */
int calib_cache_load(const char *path, const model *m, uint64_t key, calib_set **out,
		     qs_error *err);

#endif
