/* tokenizer.c - SentencePiece BPE tokenizer (see tokenizer.h).
 *
 * Encoding follows sentencepiece's normalizer.cc and bpe_model.cc for a model
 * with the identity normaliser, so that ids match the library id for id:
 *   1. normalise: a dummy-prefix U+2581 in front of non-empty text, every
 *      ' ' becomes U+2581, every byte that does not start a valid UTF-8
 *      character becomes U+FFFD (one per byte, as sentencepiece does);
 *   2. split into symbols: the longest USER_DEFINED piece starting here
 *      (frozen: never merged) or else one UTF-8 character;
 *   3. merge: repeatedly join the adjacent pair whose concatenation is a
 *      mergeable piece (NORMAL, USER_DEFINED or UNUSED) with the highest
 *      score, the leftmost pair on ties; candidates wait in a binary heap and
 *      stale ones are skipped when popped, so whole files take O(n log n);
 *   4. emit: a symbol that is an UNUSED piece is split back into the two
 *      symbols it was last merged from (recursively); a symbol that is not a
 *      piece becomes one <0xNN> per byte (byte fallback) or one <unk> per run
 *      of unknown symbols.
 *
 * The two file readers (a protobuf ModelProto and llama2.c's tokenizer.bin)
 * check every length against the end of the mapped file. */
#include "tokenizer.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapfile.h"

#define SPACE_SYM "\xe2\x96\x81"      /* U+2581 LOWER ONE EIGHTH BLOCK */
#define REPLACEMENT "\xef\xbf\xbd"    /* U+FFFD, for malformed UTF-8 */
#define UNK_SURFACE " \xe2\x81\x87 "  /* sentencepiece's text for <unk> */

enum {
	TOK_MAX_N = 1 << 24,      /* pieces in a vocabulary */
	TOK_MAX_PIECE = 1 << 18,  /* bytes in one piece */
	L2C_MAX_TOKEN = 1 << 16,  /* llama2.c max_token_length */
	PB_MAX_DEPTH = 64,        /* nested protobuf groups */
};

struct tok_vocab {
	int n;                  /* pieces */
	char **text;            /* (n) NUL-terminated piece bytes; NULL until set */
	uint32_t *len;          /* (n) bytes of text, without the NUL */
	float *score;           /* (n) higher merges first */
	unsigned char *type;    /* (n) enum tok_type; 0 until set */
	uint32_t *hash;         /* (n) hash of text, filled by tok_finish */
	int bos, eos, unk;      /* ids or -1 */
	int add_dummy_prefix;
	int finished;
	int byte_id[256];       /* id of piece <0xNN>, -1 if none */
	int has_bytes;          /* all 256 byte pieces present: byte fallback */
	int has_unused;         /* some piece has type UNUSED */
	int ws_splits;          /* no mergeable piece has U+2581 after another character */
	uint32_t max_merge_len; /* longest mergeable piece, bytes */
	int32_t *merge_ht;      /* (merge_mask+1) ids of NORMAL, USER_DEFINED, UNUSED */
	uint32_t merge_mask;
	int32_t *resv_ht;       /* (resv_mask+1) ids of UNKNOWN, CONTROL, BYTE */
	uint32_t resv_mask;
	int32_t *ud;            /* USER_DEFINED ids by first byte, longest first */
	uint32_t ud_first[257]; /* ud[ud_first[b] .. ud_first[b+1]) start with byte b */
};

/* ---- vocabulary ------------------------------------------------------- */

static uint32_t hash_bytes(const char *s, size_t n)
{
	uint32_t h = 2166136261u; /* FNV-1a, then murmur3's finaliser */
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 16777619u;
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

static int is_mergeable(int type)
{
	return type == TOK_NORMAL || type == TOK_USER_DEFINED || type == TOK_UNUSED;
}

/* 0..255 for a piece spelled exactly <0xNN> (upper-case hex), else -1. */
static int byte_of_piece(const char *s, size_t n)
{
	if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
		return -1;
	int b = 0;
	for (int i = 3; i < 5; i++) {
		int c = (unsigned char)s[i], d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -1;
		b = b * 16 + d;
	}
	return b;
}

/* A piece quoted for an error message: at most 40 bytes, control bytes and
 * quotes as \xNN. */
static const char *quote(const char *s, size_t n, char *buf, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < n && o + 8 < cap; i++) {
		unsigned char c = (unsigned char)s[i];
		if (i == 40) {
			o += (size_t)snprintf(buf + o, cap - o, "...");
			break;
		}
		if (c < 0x20 || c == 0x7f || c == '\'' || c == '\\')
			o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
		else
			buf[o++] = (char)c;
	}
	buf[o] = 0;
	return buf;
}

tok_vocab *tok_new(int n, qs_error *err)
{
	if (n <= 0 || n > TOK_MAX_N) {
		qs_err(err, QS_EUSAGE, "tokenizer: vocabulary size %d out of range (1..%d)",
		       n, TOK_MAX_N);
		return NULL;
	}
	tok_vocab *v = calloc(1, sizeof(*v));
	if (!v)
		goto fail;
	v->n = n;
	v->bos = v->eos = v->unk = -1;
	for (int b = 0; b < 256; b++)
		v->byte_id[b] = -1;
	v->text = calloc((size_t)n, sizeof(*v->text));
	v->len = calloc((size_t)n, sizeof(*v->len));
	v->score = calloc((size_t)n, sizeof(*v->score));
	v->type = calloc((size_t)n, sizeof(*v->type));
	v->hash = calloc((size_t)n, sizeof(*v->hash));
	if (!v->text || !v->len || !v->score || !v->type || !v->hash)
		goto fail;
	return v;
fail:
	tok_free(v);
	qs_err(err, QS_ENOMEM, "tokenizer: out of memory for %d pieces", n);
	return NULL;
}

void tok_free(tok_vocab *v)
{
	if (!v)
		return;
	if (v->text)
		for (int i = 0; i < v->n; i++)
			free(v->text[i]);
	free(v->text);
	free(v->len);
	free(v->score);
	free(v->type);
	free(v->hash);
	free(v->merge_ht);
	free(v->resv_ht);
	free(v->ud);
	free(v);
}

/* tok_set with the origin (a file name) for error messages. */
static int vocab_set(tok_vocab *v, int id, const char *piece, size_t len, float score,
		     int type, const char *src, qs_error *err)
{
	if (!v)
		return qs_err(err, QS_EUSAGE, "%s: no vocabulary", src);
	if (v->finished)
		return qs_err(err, QS_EUSAGE, "%s: piece %d set after tok_finish", src, id);
	if (id < 0 || id >= v->n)
		return qs_err(err, QS_EUSAGE, "%s: piece id %d out of range (%d pieces)",
			      src, id, v->n);
	if (type < TOK_NORMAL || type > TOK_BYTE)
		return qs_err(err, QS_EFORMAT, "%s: piece %d: type %d unknown", src, id, type);
	if (len == 0 || !piece)
		return qs_err(err, QS_EFORMAT, "%s: piece %d: empty", src, id);
	if (len > TOK_MAX_PIECE)
		return qs_err(err, QS_EFORMAT, "%s: piece %d: length %zu too long (max %d)",
			      src, id, len, TOK_MAX_PIECE);
	if (memchr(piece, 0, len))
		return qs_err(err, QS_EFORMAT, "%s: piece %d: contains a nul byte", src, id);
	if (isnan(score))
		return qs_err(err, QS_EFORMAT, "%s: piece %d: score is not a number", src, id);
	char *t = malloc(len + 1);
	if (!t)
		return qs_err(err, QS_ENOMEM, "%s: piece %d: out of memory", src, id);
	memcpy(t, piece, len);
	t[len] = 0;
	free(v->text[id]);
	v->text[id] = t;
	v->len[id] = (uint32_t)len;
	v->score[id] = score;
	v->type[id] = (unsigned char)type;
	return 0;
}

int tok_set(tok_vocab *v, int id, const char *piece, size_t len, float score,
	    int type, qs_error *err)
{
	return vocab_set(v, id, piece, len, score, type, "tokenizer", err);
}

static int32_t ht_find(const tok_vocab *v, const int32_t *ht, uint32_t mask,
		       const char *s, uint32_t n, uint32_t h)
{
	for (uint32_t i = h & mask;; i = (i + 1) & mask) {
		int32_t id = ht[i];
		if (id < 0)
			return -1;
		if (v->hash[id] == h && v->len[id] == n && memcmp(v->text[id], s, n) == 0)
			return id;
	}
}

/* Open-addressed table of the ids whose type is (or is not) mergeable, at
 * most half full. A piece spelled like an earlier one is an error. */
static int ht_build(const tok_vocab *v, int mergeable, int32_t **out, uint32_t *mask,
		    const char *src, qs_error *err)
{
	size_t count = 0, size = 16;
	for (int i = 0; i < v->n; i++)
		count += is_mergeable(v->type[i]) == mergeable;
	while (size < 2 * count)
		size *= 2;
	int32_t *ht = malloc(size * sizeof(*ht));
	if (!ht)
		return qs_err(err, QS_ENOMEM, "%s: out of memory for the piece index", src);
	memset(ht, 0xff, size * sizeof(*ht));
	uint32_t m = (uint32_t)(size - 1);
	for (int i = 0; i < v->n; i++) {
		if (is_mergeable(v->type[i]) != mergeable)
			continue;
		int32_t dup = ht_find(v, ht, m, v->text[i], v->len[i], v->hash[i]);
		if (dup >= 0) {
			char q[200];
			free(ht);
			return qs_err(err, QS_EFORMAT, "%s: piece %d '%s' duplicates piece %d", src,
				      i, quote(v->text[i], v->len[i], q, sizeof(q)), (int)dup);
		}
		uint32_t j = v->hash[i] & m;
		while (ht[j] >= 0)
			j = (j + 1) & m;
		ht[j] = i;
	}
	*out = ht;
	*mask = m;
	return 0;
}

/* USER_DEFINED pieces ordered by first byte, then longest first. */
typedef struct ud_key {
	uint64_t key; /* first byte << 32 | (UINT32_MAX - length) */
	int32_t id;
} ud_key;

static int ud_cmp(const void *a, const void *b)
{
	const ud_key *x = a, *y = b;
	if (x->key != y->key)
		return x->key < y->key ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* Whether U+2581 follows something other than U+2581 in s: "a\u2581" does,
 * "\u2581\u2581" and "\u2581a" do not. */
static int space_after_char(const char *s, size_t n)
{
	for (size_t i = 1; i + 3 <= n; i++)
		if (memcmp(s + i, SPACE_SYM, 3) == 0 && (i < 3 || memcmp(s + i - 3, SPACE_SYM, 3) != 0))
			return 1;
	return 0;
}

int tok_finish(tok_vocab *v, int bos, int eos, int unk, int add_dummy_prefix,
	       const char *src, qs_error *err)
{
	int32_t *merge_ht = NULL, *resv_ht = NULL, *ud = NULL;
	uint32_t merge_mask = 0, resv_mask = 0;
	int byte_id[256], n_bytes = 0, rc;
	char q[200];

	if (!src)
		src = "tokenizer";
	if (!v)
		return qs_err(err, QS_EUSAGE, "%s: no vocabulary", src);
	if (v->finished)
		return qs_err(err, QS_EUSAGE, "%s: vocabulary already finished", src);
	for (int i = 0; i < v->n; i++)
		if (!v->text[i])
			return qs_err(err, QS_EFORMAT, "%s: piece %d not set", src, i);
	const int special[3] = {bos, eos, unk};
	const char *names[3] = {"bos", "eos", "unk"};
	for (int k = 0; k < 3; k++)
		if (special[k] < -1 || special[k] >= v->n)
			return qs_err(err, QS_EFORMAT, "%s: %s id %d out of range (%d pieces)",
				      src, names[k], special[k], v->n);

	for (int b = 0; b < 256; b++)
		byte_id[b] = -1;
	for (int i = 0; i < v->n; i++) {
		if (v->type[i] != TOK_BYTE)
			continue;
		int b = byte_of_piece(v->text[i], v->len[i]);
		if (b < 0)
			return qs_err(err, QS_EFORMAT,
				      "%s: piece %d '%s' has type byte but is not spelled <0xNN>",
				      src, i, quote(v->text[i], v->len[i], q, sizeof(q)));
		if (byte_id[b] >= 0)
			return qs_err(err, QS_EFORMAT, "%s: piece %d '%s' duplicates piece %d",
				      src, i, v->text[i], byte_id[b]);
		byte_id[b] = i;
		n_bytes++;
	}
	if (n_bytes > 0 && n_bytes < 256) {
		int b = 0;
		while (byte_id[b] >= 0)
			b++;
		return qs_err(err, QS_EFORMAT, "%s: only %d of 256 byte pieces (<0x%02X> missing)",
			      src, n_bytes, b);
	}

	uint32_t max_merge_len = 0;
	size_t n_ud = 0;
	int has_unused = 0, ws_splits = 1;
	for (int i = 0; i < v->n; i++) {
		v->hash[i] = hash_bytes(v->text[i], v->len[i]);
		n_ud += v->type[i] == TOK_USER_DEFINED;
		has_unused |= v->type[i] == TOK_UNUSED;
		if (!is_mergeable(v->type[i]))
			continue;
		if (v->len[i] > max_merge_len)
			max_merge_len = v->len[i];
		ws_splits &= !space_after_char(v->text[i], v->len[i]);
	}
	if ((rc = ht_build(v, 1, &merge_ht, &merge_mask, src, err)) ||
	    (rc = ht_build(v, 0, &resv_ht, &resv_mask, src, err)))
		goto fail;
	ud = malloc((n_ud ? n_ud : 1) * sizeof(*ud));
	ud_key *keys = malloc((n_ud ? n_ud : 1) * sizeof(*keys));
	if (!ud || !keys) {
		free(keys);
		rc = qs_err(err, QS_ENOMEM, "%s: out of memory", src);
		goto fail;
	}
	n_ud = 0;
	for (int i = 0; i < v->n; i++) {
		if (v->type[i] != TOK_USER_DEFINED)
			continue;
		keys[n_ud].key = (uint64_t)(unsigned char)v->text[i][0] << 32 |
				 (uint32_t)(UINT32_MAX - v->len[i]);
		keys[n_ud++].id = i;
	}
	qsort(keys, n_ud, sizeof(*keys), ud_cmp);
	for (size_t k = 0; k < n_ud; k++)
		ud[k] = keys[k].id;
	free(keys);
	memset(v->ud_first, 0, sizeof(v->ud_first));
	for (size_t k = 0; k < n_ud; k++)
		v->ud_first[(unsigned char)v->text[ud[k]][0] + 1]++;
	for (int b = 0; b < 256; b++)
		v->ud_first[b + 1] += v->ud_first[b];

	v->merge_ht = merge_ht;
	v->merge_mask = merge_mask;
	v->resv_ht = resv_ht;
	v->resv_mask = resv_mask;
	v->ud = ud;
	memcpy(v->byte_id, byte_id, sizeof(byte_id));
	v->has_bytes = n_bytes == 256;
	v->has_unused = has_unused;
	v->ws_splits = ws_splits && !has_unused;
	v->max_merge_len = max_merge_len;
	v->bos = bos;
	v->eos = eos;
	v->unk = unk;
	v->add_dummy_prefix = !!add_dummy_prefix;
	v->finished = 1;
	return 0;
fail:
	free(merge_ht);
	free(resv_ht);
	free(ud);
	return rc;
}

int tok_n_vocab(const tok_vocab *v) { return v ? v->n : 0; }
int tok_bos(const tok_vocab *v) { return v ? v->bos : -1; }
int tok_eos(const tok_vocab *v) { return v ? v->eos : -1; }

const char *tok_piece(const tok_vocab *v, int id, size_t *len)
{
	if (!v || id < 0 || id >= v->n || !v->text[id]) {
		if (len)
			*len = 0;
		return "";
	}
	if (len)
		*len = v->len[id];
	return v->text[id];
}

float tok_score(const tok_vocab *v, int id)
{
	return v && id >= 0 && id < v->n ? v->score[id] : 0.0f;
}

int tok_type_of(const tok_vocab *v, int id)
{
	return v && id >= 0 && id < v->n ? v->type[id] : 0;
}

/* ---- encoding --------------------------------------------------------- */

/* Length of the valid UTF-8 character at s (n > 0 bytes left), or 0 when
 * malformed: truncated, overlong, a surrogate or above U+10FFFF. */
static size_t utf8_valid_len(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
	if (c >= 0xe0 && c <= 0xef) {
		if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
			return 0;
		uint32_t cp = (c & 0x0fu) << 12 | (s[1] & 0x3fu) << 6 | (s[2] & 0x3fu);
		return cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff) ? 3 : 0;
	}
	if (c >= 0xf0 && c <= 0xf4) {
		if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 ||
		    (s[3] & 0xc0) != 0x80)
			return 0;
		uint32_t cp = (c & 0x07u) << 18 | (s[1] & 0x3fu) << 12 | (s[2] & 0x3fu) << 6 |
			      (s[3] & 0x3fu);
		return cp >= 0x10000 && cp <= 0x10ffff ? 4 : 0;
	}
	return 0;
}

typedef struct sym {
	int32_t prev, next;  /* neighbours in the live list, -1 at the ends */
	uint32_t start, len; /* bytes of the normalised text; len 0 once merged away */
	int frozen;          /* a USER_DEFINED piece: never merged */
} sym;

/* A candidate merge of symbol left with its right neighbour into a piece of
 * size bytes. It is stale once left died or either side grew: the sizes no
 * longer add up (symbols only grow, and left's right neighbour only changes
 * by merging into left). */
typedef struct cand {
	float score;
	int32_t left;
	uint32_t size;
} cand;

typedef struct enc {
	const tok_vocab *v;
	const char *norm;   /* normalised text */
	sym *s;             /* (n_sym) */
	cand *heap;         /* (n_heap) max-heap by score, then leftmost */
	size_t n_heap, cap_heap;
	uint32_t *rev_left; /* (v->n) UNUSED piece -> length of its left part at its last merge */
	uint32_t *stack;    /* (2 * (max_merge_len + 1)) start, len pairs to emit */
	int *out;           /* ids written so far */
	size_t n_out;
	int prev_unk;
} enc;

static int cand_before(const cand *a, const cand *b)
{
	return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int heap_push(enc *e, cand c, qs_error *err)
{
	if (e->n_heap == e->cap_heap) {
		size_t cap, bytes;
		if (__builtin_mul_overflow(e->cap_heap, 2, &cap) ||
		    __builtin_mul_overflow(cap, sizeof(cand), &bytes))
			return qs_err(err, QS_ENOMEM, "tokenizer: merge queue too large");
		cand *h = realloc(e->heap, bytes);
		if (!h)
			return qs_err(err, QS_ENOMEM, "tokenizer: out of memory for the merge queue");
		e->heap = h;
		e->cap_heap = cap;
	}
	size_t i = e->n_heap++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!cand_before(&c, &e->heap[p]))
			break;
		e->heap[i] = e->heap[p];
		i = p;
	}
	e->heap[i] = c;
	return 0;
}

static cand heap_pop(enc *e)
{
	cand top = e->heap[0], last = e->heap[--e->n_heap];
	size_t n = e->n_heap, i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && cand_before(&e->heap[c + 1], &e->heap[c]))
			c++;
		if (!cand_before(&e->heap[c], &last))
			break;
		e->heap[i] = e->heap[c];
		i = c;
	}
	if (n)
		e->heap[i] = last;
	return top;
}

/* Queue the merge of symbols l and r if their concatenation is a piece. */
static int try_pair(enc *e, int32_t l, int32_t r, qs_error *err)
{
	const tok_vocab *v = e->v;
	if (l < 0 || r < 0 || e->s[l].frozen || e->s[r].frozen)
		return 0;
	uint32_t size = e->s[l].len + e->s[r].len;
	if (size > v->max_merge_len)
		return 0;
	const char *p = e->norm + e->s[l].start;
	int32_t id = ht_find(v, v->merge_ht, v->merge_mask, p, size, hash_bytes(p, size));
	if (id < 0)
		return 0;
	if (v->type[id] == TOK_UNUSED)
		e->rev_left[id] = e->s[l].len;
	cand c = {v->score[id], l, size};
	return heap_push(e, c, err);
}

/* The id of a final symbol: special pieces first, as sentencepiece's
 * PieceToId does, then mergeable ones; -1 if it is no piece. */
static int32_t final_id(const tok_vocab *v, const char *p, uint32_t n)
{
	uint32_t h = hash_bytes(p, n);
	int32_t id = ht_find(v, v->resv_ht, v->resv_mask, p, n, h);
	return id >= 0 ? id : ht_find(v, v->merge_ht, v->merge_mask, p, n, h);
}

static int emit_one(enc *e, uint32_t start, uint32_t len, int32_t id, qs_error *err)
{
	const tok_vocab *v = e->v;
	if (id >= 0 && v->type[id] != TOK_UNKNOWN) {
		e->out[e->n_out++] = id;
		e->prev_unk = 0;
		return 0;
	}
	if (v->has_bytes) {
		for (uint32_t i = 0; i < len; i++)
			e->out[e->n_out++] = v->byte_id[(unsigned char)e->norm[start + i]];
	} else if (v->unk >= 0 || id >= 0) {
		if (!e->prev_unk) /* a run of unknown symbols is one <unk> */
			e->out[e->n_out++] = v->unk >= 0 ? v->unk : id;
	} else {
		char q[200];
		return qs_err(err, QS_EFORMAT,
			      "tokenizer: '%s' is not in the vocabulary, which has neither <unk> "
			      "nor byte pieces", quote(e->norm + start, len, q, sizeof(q)));
	}
	e->prev_unk = 1;
	return 0;
}

/* Emit one final symbol, re-splitting UNUSED pieces. */
static int emit_symbol(enc *e, uint32_t start, uint32_t len, qs_error *err)
{
	const tok_vocab *v = e->v;
	if (!v->has_unused)
		return emit_one(e, start, len, final_id(v, e->norm + start, len), err);
	size_t top = 0, cap = 2 * ((size_t)v->max_merge_len + 1);
	e->stack[top++] = start;
	e->stack[top++] = len;
	while (top) {
		uint32_t n = e->stack[--top], st = e->stack[--top];
		int32_t id = final_id(v, e->norm + st, n);
		uint32_t l = id >= 0 && v->type[id] == TOK_UNUSED ? e->rev_left[id] : 0;
		if (l > 0 && l < n && top + 4 <= cap) {
			e->stack[top++] = st + l; /* right part, emitted second */
			e->stack[top++] = n - l;
			e->stack[top++] = st;
			e->stack[top++] = l;
			continue;
		}
		int rc = emit_one(e, st, n, id, err);
		if (rc)
			return rc;
	}
	return 0;
}

/* Pop candidates best first and merge until none is left. */
static int merge_all(enc *e, qs_error *err)
{
	while (e->n_heap) {
		cand c = heap_pop(e);
		sym *l = &e->s[c.left];
		if (l->len == 0 || l->next < 0)
			continue;
		sym *r = &e->s[l->next];
		if (l->len + r->len != c.size)
			continue; /* stale */
		l->len += r->len;
		l->next = r->next;
		if (r->next >= 0)
			e->s[r->next].prev = c.left;
		r->len = 0;
		int rc;
		if ((rc = try_pair(e, l->prev, c.left, err)) ||
		    (rc = try_pair(e, c.left, l->next, err)))
			return rc;
	}
	return 0;
}

/* End of the segment of symbols that starts at a. When no mergeable piece
 * has U+2581 after another character (v->ws_splits), no merge crosses from
 * a symbol not ending in U+2581 to one starting with it, so each segment
 * can be merged on its own: its candidates never involve another segment,
 * and the heap pops them in the same relative order as one heap over the
 * whole text would. Small heaps stay in cache. Otherwise one segment. */
static size_t next_segment(const enc *e, size_t a, size_t n_sym)
{
	if (!e->v->ws_splits)
		return n_sym;
	for (size_t i = a + 1; i < n_sym; i++) {
		const sym *p = &e->s[i - 1], *s = &e->s[i];
		if (s->len >= 3 && memcmp(e->norm + s->start, SPACE_SYM, 3) == 0 &&
		    !(p->len >= 3 && memcmp(e->norm + p->start + p->len - 3, SPACE_SYM, 3) == 0))
			return i;
	}
	return n_sym;
}

/* Step 1: the normalised text into *out (malloc'd), its length into *n. */
static int normalize(const tok_vocab *v, const unsigned char *t, size_t len, char **out,
		     size_t *n, qs_error *err)
{
	size_t cap;
	if (__builtin_mul_overflow(len, 3, &cap) || __builtin_add_overflow(cap, 4, &cap))
		return qs_err(err, QS_ENOMEM, "tokenizer: text of %zu bytes too long", len);
	char *o = malloc(cap);
	if (!o)
		return qs_err(err, QS_ENOMEM, "tokenizer: out of memory for %zu bytes of text", len);
	size_t k = 0;
	if (len > 0 && v->add_dummy_prefix) {
		memcpy(o, SPACE_SYM, 3);
		k = 3;
	}
	for (size_t i = 0; i < len;) {
		if (t[i] == ' ') {
			memcpy(o + k, SPACE_SYM, 3);
			k += 3;
			i++;
		} else if (t[i] < 0x80) {
			o[k++] = (char)t[i++];
		} else {
			size_t m = utf8_valid_len(t + i, len - i);
			if (m == 0) {
				memcpy(o + k, REPLACEMENT, 3);
				k += 3;
				i++;
			} else {
				memcpy(o + k, t + i, m);
				k += m;
				i += m;
			}
		}
	}
	*out = o;
	*n = k;
	return 0;
}

/* Length of the symbol at norm[i]: a user-defined piece (*frozen = 1) or one
 * character. norm is valid UTF-8. */
static uint32_t symbol_len(const tok_vocab *v, const char *norm, size_t i, size_t n,
			   int *frozen)
{
	unsigned char c = (unsigned char)norm[i];
	for (uint32_t k = v->ud_first[c]; k < v->ud_first[c + 1]; k++) {
		int32_t id = v->ud[k];
		if (v->len[id] <= n - i && memcmp(v->text[id], norm + i, v->len[id]) == 0) {
			*frozen = 1;
			return v->len[id];
		}
	}
	*frozen = 0;
	uint32_t m = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
	return m <= n - i ? m : (uint32_t)(n - i);
}

int tok_encode(const tok_vocab *v, const char *text, size_t len, int add_bos,
	       int **ids, size_t *n_ids, qs_error *err)
{
	enc e = {0};
	char *norm = NULL;
	size_t n_norm = 0, n_sym = 0, cap_out;
	int rc;

	*ids = NULL;
	*n_ids = 0;
	if (!v || !v->finished)
		return qs_err(err, QS_EUSAGE, "tokenizer: vocabulary not finished");
	if (!text && len)
		return qs_err(err, QS_EUSAGE, "tokenizer: no text");
	if ((rc = normalize(v, (const unsigned char *)text, len, &norm, &n_norm, err)))
		return rc;
	if (n_norm >= INT32_MAX) {
		rc = qs_err(err, QS_ENOMEM, "tokenizer: text of %zu bytes too long", len);
		goto out;
	}
	e.v = v;
	e.norm = norm;
	cap_out = n_norm + 1; /* every id covers at least one byte, plus BOS */
	e.out = malloc(cap_out * sizeof(*e.out));
	e.s = malloc((n_norm ? n_norm : 1) * sizeof(*e.s));
	e.cap_heap = n_norm + 16;
	e.heap = malloc(e.cap_heap * sizeof(*e.heap));
	if (v->has_unused) {
		e.rev_left = calloc((size_t)v->n, sizeof(*e.rev_left));
		e.stack = malloc(2 * ((size_t)v->max_merge_len + 1) * sizeof(*e.stack));
	}
	if (!e.out || !e.s || !e.heap || (v->has_unused && (!e.rev_left || !e.stack))) {
		rc = qs_err(err, QS_ENOMEM, "tokenizer: out of memory for %zu bytes of text", len);
		goto out;
	}
	if (add_bos && v->bos >= 0)
		e.out[e.n_out++] = v->bos;

	/* Step 2: symbols. */
	for (size_t i = 0; i < n_norm;) {
		sym *s = &e.s[n_sym];
		s->start = (uint32_t)i;
		s->len = symbol_len(v, norm, i, n_norm, &s->frozen);
		s->prev = (int32_t)n_sym - 1;
		i += s->len;
		s->next = i < n_norm ? (int32_t)n_sym + 1 : -1;
		n_sym++;
	}

	/* Step 3: merges, one segment at a time. */
	for (size_t a = 0, b; a < n_sym; a = b) {
		b = next_segment(&e, a, n_sym);
		for (size_t i = a + 1; i < b; i++)
			if ((rc = try_pair(&e, (int32_t)i - 1, (int32_t)i, err)))
				goto out;
		if ((rc = merge_all(&e, err)))
			goto out;
	}

	/* Step 4: ids. */
	for (int32_t i = n_sym ? 0 : -1; i >= 0; i = e.s[i].next)
		if ((rc = emit_symbol(&e, e.s[i].start, e.s[i].len, err)))
			goto out;
	int *shrunk = realloc(e.out, (e.n_out ? e.n_out : 1) * sizeof(*e.out));
	*ids = shrunk ? shrunk : e.out;
	*n_ids = e.n_out;
	e.out = NULL;
	rc = 0;
out:
	free(norm);
	free(e.out);
	free(e.s);
	free(e.heap);
	free(e.rev_left);
	free(e.stack);
	return rc;
}

/* ---- decoding --------------------------------------------------------- */

size_t tok_decode(const tok_vocab *v, int prev, int id, char *buf, size_t cap)
{
	if (cap == 0)
		return 0;
	buf[0] = 0;
	if (!v || id < 0 || id >= v->n || !v->text[id])
		return 0;
	const char *s = v->text[id];
	size_t n = v->len[id], o = 0;
	switch (v->type[id]) {
	case TOK_CONTROL:
		return 0;
	case TOK_UNKNOWN:
		s = UNK_SURFACE;
		n = strlen(UNK_SURFACE);
		break;
	case TOK_BYTE: {
		int b = byte_of_piece(s, n);
		if (b >= 0 && cap > 1) {
			buf[0] = (char)b;
			buf[1] = 0;
			return 1;
		}
		return 0;
	}
	default:
		if (v->add_dummy_prefix && (prev < 0 || prev == v->bos) && n >= 3 &&
		    memcmp(s, SPACE_SYM, 3) == 0) {
			s += 3;
			n -= 3;
		}
	}
	for (size_t i = 0; i < n && o + 1 < cap;) {
		if (n - i >= 3 && memcmp(s + i, SPACE_SYM, 3) == 0) {
			buf[o++] = ' ';
			i += 3;
		} else {
			buf[o++] = s[i++];
		}
	}
	buf[o] = 0;
	return o;
}

/* ---- SentencePiece ModelProto ----------------------------------------- */

typedef struct pb_reader {
	const unsigned char *p, *end; /* the message still to read */
	const unsigned char *base;    /* start of the file, for offsets */
	const char *path;
	const char *what;             /* "", "trainer_spec", "piece 812" */
} pb_reader;

typedef struct pb_field {
	uint32_t num;
	int wire;
	uint64_t u;                 /* wire types 0, 1, 5 */
	const unsigned char *data;  /* wire type 2 */
	size_t len;
	size_t off;                 /* file offset of the key */
} pb_field;

static int pb_fail(const pb_reader *r, qs_error *err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int pb_fail(const pb_reader *r, qs_error *err, const char *fmt, ...)
{
	char msg[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return qs_err(err, QS_EFORMAT, "%s: %s%s%s", r->path, r->what, *r->what ? ": " : "",
		      msg);
}

static int pb_varint(pb_reader *r, uint64_t *out, qs_error *err)
{
	uint64_t x = 0;
	size_t off = (size_t)(r->p - r->base);
	for (int i = 0; i < 10; i++) {
		if (r->p >= r->end)
			return pb_fail(r, err, "varint at byte %zu runs past end of message", off);
		unsigned b = *r->p++;
		if (i == 9 && b > 1)
			break;
		x |= (uint64_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80)) {
			*out = x;
			return 0;
		}
	}
	return pb_fail(r, err, "bad varint at byte %zu (more than 64 bits)", off);
}

static uint64_t load_le(const unsigned char *p, int n)
{
	uint64_t x = 0;
	for (int i = n - 1; i >= 0; i--)
		x = x << 8 | p[i];
	return x;
}

/* One field, any wire type; a group (3) is consumed through its end (4). An
 * end-group key is returned as a field of wire type 4. */
static int pb_read(pb_reader *r, pb_field *f, int depth, qs_error *err)
{
	uint64_t key;
	int rc;
	f->off = (size_t)(r->p - r->base);
	if ((rc = pb_varint(r, &key, err)))
		return rc;
	if (key >> 3 == 0 || key >> 3 > 0x1fffffff)
		return pb_fail(r, err, "bad field number %llu at byte %zu",
			       (unsigned long long)(key >> 3), f->off);
	f->num = (uint32_t)(key >> 3);
	f->wire = (int)(key & 7);
	size_t left = (size_t)(r->end - r->p);
	switch (f->wire) {
	case 0:
		return pb_varint(r, &f->u, err);
	case 1:
	case 5: {
		int n = f->wire == 1 ? 8 : 4;
		if (left < (size_t)n)
			return pb_fail(r, err, "field %u: %d-byte value past end of message",
				       f->num, n);
		f->u = load_le(r->p, n);
		r->p += n;
		return 0;
	}
	case 2: {
		uint64_t len;
		if ((rc = pb_varint(r, &len, err)))
			return rc;
		left = (size_t)(r->end - r->p);
		if (len > left)
			return pb_fail(r, err, "field %u: length %llu past end of message (%zu left)",
				       f->num, (unsigned long long)len, left);
		f->data = r->p;
		f->len = (size_t)len;
		r->p += len;
		return 0;
	}
	case 3:
		if (depth >= PB_MAX_DEPTH)
			return pb_fail(r, err, "groups nested too deeply at byte %zu", f->off);
		for (;;) {
			pb_field g;
			if (r->p >= r->end)
				return pb_fail(r, err, "group %u from byte %zu not terminated",
					       f->num, f->off);
			if ((rc = pb_read(r, &g, depth + 1, err)))
				return rc;
			if (g.wire == 4) {
				if (g.num != f->num)
					return pb_fail(r, err, "group %u ends with field %u at byte %zu",
						       f->num, g.num, g.off);
				return 0;
			}
		}
	case 4:
		return 0;
	default:
		return pb_fail(r, err, "field %u: invalid wire type %d at byte %zu", f->num,
			       f->wire, f->off);
	}
}

/* Next field of the message: 1, 0 at its end, or a negative error. */
static int pb_next(pb_reader *r, pb_field *f, qs_error *err)
{
	if (r->p >= r->end)
		return 0;
	int rc = pb_read(r, f, 0, err);
	if (rc)
		return rc;
	if (f->wire == 4)
		return pb_fail(r, err, "end-group %u without start at byte %zu", f->num, f->off);
	return 1;
}

static int pb_want(const pb_reader *r, const pb_field *f, int wire, const char *name,
		   qs_error *err)
{
	if (f->wire == wire)
		return 0;
	return pb_fail(r, err, "field %u (%s) has wire type %d, expected %d at byte %zu",
		       f->num, name, f->wire, wire, f->off);
}

static pb_reader pb_sub(const pb_reader *r, const pb_field *f, const char *what)
{
	pb_reader s = {f->data, f->data + f->len, r->base, r->path, what};
	return s;
}

/* The parts of TrainerSpec and NormalizerSpec that change encoding, with
 * sentencepiece_model.proto's defaults. */
typedef struct spm_spec {
	uint64_t model_type;        /* trainer_spec 3: 1 unigram, 2 bpe, 3 word, 4 char */
	int treat_ws_as_suffix;     /* trainer_spec 24 */
	int byte_fallback;          /* trainer_spec 35 */
	int32_t unk_id, bos_id, eos_id; /* trainer_spec 40, 41, 42 */
	const unsigned char *name;  /* normalizer_spec 1 */
	size_t name_len;
	size_t charsmap_len;        /* normalizer_spec 2 */
	int add_dummy_prefix;       /* normalizer_spec 3 */
	int remove_extra_ws;        /* normalizer_spec 4 */
	int escape_ws;              /* normalizer_spec 5 */
} spm_spec;

static int parse_trainer(pb_reader r, spm_spec *sp, qs_error *err)
{
	pb_field f;
	int rc;
	while ((rc = pb_next(&r, &f, err)) > 0) {
		switch (f.num) {
		case 3:
			if ((rc = pb_want(&r, &f, 0, "model_type", err)))
				return rc;
			sp->model_type = f.u;
			break;
		case 24:
			if ((rc = pb_want(&r, &f, 0, "treat_whitespace_as_suffix", err)))
				return rc;
			sp->treat_ws_as_suffix = f.u != 0;
			break;
		case 35:
			if ((rc = pb_want(&r, &f, 0, "byte_fallback", err)))
				return rc;
			sp->byte_fallback = f.u != 0;
			break;
		case 40:
		case 41:
		case 42: {
			static const char *names[] = {"unk_id", "bos_id", "eos_id"};
			int32_t *ids[] = {&sp->unk_id, &sp->bos_id, &sp->eos_id};
			if ((rc = pb_want(&r, &f, 0, names[f.num - 40], err)))
				return rc;
			*ids[f.num - 40] = (int32_t)(uint32_t)f.u; /* int32: low 32 bits */
			break;
		}
		}
	}
	return rc;
}

static int parse_normalizer(pb_reader r, spm_spec *sp, qs_error *err)
{
	pb_field f;
	int rc;
	while ((rc = pb_next(&r, &f, err)) > 0) {
		switch (f.num) {
		case 1:
			if ((rc = pb_want(&r, &f, 2, "name", err)))
				return rc;
			sp->name = f.data;
			sp->name_len = f.len;
			break;
		case 2:
			if ((rc = pb_want(&r, &f, 2, "precompiled_charsmap", err)))
				return rc;
			sp->charsmap_len = f.len;
			break;
		case 3:
		case 4:
		case 5: {
			static const char *names[] = {"add_dummy_prefix", "remove_extra_whitespaces",
						      "escape_whitespaces"};
			int *flags[] = {&sp->add_dummy_prefix, &sp->remove_extra_ws, &sp->escape_ws};
			if ((rc = pb_want(&r, &f, 0, names[f.num - 3], err)))
				return rc;
			*flags[f.num - 3] = f.u != 0;
			break;
		}
		}
	}
	return rc;
}

static int parse_piece(pb_reader r, tok_vocab *v, int id, qs_error *err)
{
	pb_field f;
	const unsigned char *text = NULL;
	size_t len = 0;
	float score = 0;
	uint64_t type = TOK_NORMAL;
	int rc;
	while ((rc = pb_next(&r, &f, err)) > 0) {
		switch (f.num) {
		case 1:
			if ((rc = pb_want(&r, &f, 2, "piece", err)))
				return rc;
			text = f.data;
			len = f.len;
			break;
		case 2: {
			if ((rc = pb_want(&r, &f, 5, "score", err)))
				return rc;
			uint32_t bits = (uint32_t)f.u;
			memcpy(&score, &bits, sizeof(score));
			break;
		}
		case 3:
			if ((rc = pb_want(&r, &f, 0, "type", err)))
				return rc;
			type = f.u;
			break;
		}
	}
	if (rc)
		return rc;
	if (type < TOK_NORMAL || type > TOK_BYTE)
		return pb_fail(&r, err, "type %llu unknown", (unsigned long long)type);
	if (!text || len == 0)
		return pb_fail(&r, err, "empty piece");
	return vocab_set(v, id, (const char *)text, len, score, (int)type, r.path, err);
}

int tok_load_spm(const char *path, tok_vocab **out, qs_error *err)
{
	qs_map m = {0};
	tok_vocab *v = NULL;
	spm_spec sp = {.model_type = 1, .unk_id = 0, .bos_id = 1, .eos_id = 2,
		       .add_dummy_prefix = 1, .remove_extra_ws = 1, .escape_ws = 1};
	pb_field f;
	char what[32];
	long n = 0;
	int rc;

	*out = NULL;
	if ((rc = qs_map_open(&m, path, err)))
		return rc;
	pb_reader top = {m.data, m.data + m.size, m.data, path, ""};
	if (m.size == 0) {
		rc = pb_fail(&top, err, "empty file");
		goto fail;
	}

	/* Pass 1: structure, specs and the number of pieces. */
	while ((rc = pb_next(&top, &f, err)) > 0) {
		if (f.num == 1) {
			if ((rc = pb_want(&top, &f, 2, "pieces", err)))
				goto fail;
			if (++n > TOK_MAX_N) {
				rc = pb_fail(&top, err, "more than %d pieces", TOK_MAX_N);
				goto fail;
			}
		} else if (f.num == 2) {
			if ((rc = pb_want(&top, &f, 2, "trainer_spec", err)) ||
			    (rc = parse_trainer(pb_sub(&top, &f, "trainer_spec"), &sp, err)))
				goto fail;
		} else if (f.num == 3) {
			if ((rc = pb_want(&top, &f, 2, "normalizer_spec", err)) ||
			    (rc = parse_normalizer(pb_sub(&top, &f, "normalizer_spec"), &sp, err)))
				goto fail;
		}
	}
	if (rc)
		goto fail;
	if (n == 0) {
		rc = pb_fail(&top, err, "no pieces");
		goto fail;
	}

	/* What this tokenizer can do. */
	static const char *model_types[] = {"?", "unigram", "bpe", "word", "char"};
	if (sp.model_type != 2) {
		rc = qs_err(err, QS_EUNSUPP,
			    "%s: trainer_spec.model_type %llu (%s) not supported, only bpe", path,
			    (unsigned long long)sp.model_type,
			    model_types[sp.model_type <= 4 ? sp.model_type : 0]);
		goto fail;
	}
	if (sp.charsmap_len > 0 ||
	    (sp.name && !(sp.name_len == 8 && memcmp(sp.name, "identity", 8) == 0))) {
		char q[200];
		rc = qs_err(err, QS_EUNSUPP,
			    "%s: normalizer_spec.name '%s' not supported, only identity", path,
			    sp.name ? quote((const char *)sp.name, sp.name_len, q, sizeof(q))
				    : "(precompiled charsmap)");
		goto fail;
	}
	if (sp.remove_extra_ws || !sp.escape_ws || sp.treat_ws_as_suffix) {
		rc = qs_err(err, QS_EUNSUPP, "%s: %s not supported", path,
			    sp.remove_extra_ws ? "normalizer_spec.remove_extra_whitespaces"
			    : !sp.escape_ws    ? "normalizer_spec.escape_whitespaces off"
					       : "trainer_spec.treat_whitespace_as_suffix");
		goto fail;
	}

	/* Pass 2: the pieces. */
	if (!(v = tok_new((int)n, err))) {
		rc = err ? err->code : QS_ENOMEM;
		goto fail;
	}
	top.p = m.data;
	int id = 0;
	while ((rc = pb_next(&top, &f, err)) > 0) {
		if (f.num != 1)
			continue;
		snprintf(what, sizeof(what), "piece %d", id);
		if ((rc = parse_piece(pb_sub(&top, &f, what), v, id, err)))
			goto fail;
		id++;
	}
	if (rc)
		goto fail;

	int n_bytes = 0;
	for (int i = 0; i < v->n; i++)
		n_bytes += v->type[i] == TOK_BYTE;
	if (n_bytes && !sp.byte_fallback) {
		rc = qs_err(err, QS_EFORMAT,
			    "%s: trainer_spec.byte_fallback is off but there are byte pieces", path);
		goto fail;
	}
	if (sp.byte_fallback && n_bytes != 256) {
		rc = qs_err(err, QS_EFORMAT,
			    "%s: trainer_spec.byte_fallback is on but there are %d byte pieces, not 256",
			    path, n_bytes);
		goto fail;
	}
	if (sp.unk_id < 0 || sp.unk_id >= v->n || v->type[sp.unk_id] != TOK_UNKNOWN) {
		rc = qs_err(err, QS_EFORMAT, "%s: trainer_spec.unk_id %d is not an unknown piece",
			    path, (int)sp.unk_id);
		goto fail;
	}
	/* As sentencepiece's bos_id()/eos_id(): -1 unless a control piece. */
	int bos = sp.bos_id >= 0 && sp.bos_id < v->n && v->type[sp.bos_id] == TOK_CONTROL
			  ? sp.bos_id : -1;
	int eos = sp.eos_id >= 0 && sp.eos_id < v->n && v->type[sp.eos_id] == TOK_CONTROL
			  ? sp.eos_id : -1;
	if ((rc = tok_finish(v, bos, eos, sp.unk_id, sp.add_dummy_prefix, path, err)))
		goto fail;
	qs_map_close(&m);
	*out = v;
	return 0;
fail:
	tok_free(v);
	qs_map_close(&m);
	return rc;
}

/* ---- llama2.c tokenizer.bin ------------------------------------------- */

int tok_load_llama2c(const char *path, int vocab_size, tok_vocab **out, qs_error *err)
{
	qs_map m = {0};
	tok_vocab *v = NULL;
	char *piece = NULL;
	int rc;

	*out = NULL;
	if (vocab_size <= 0 || vocab_size > TOK_MAX_N)
		return qs_err(err, QS_EUSAGE, "%s: vocab_size %d out of range (1..%d)", path,
			      vocab_size, TOK_MAX_N);
	if ((rc = qs_map_open(&m, path, err)))
		return rc;
	const unsigned char *p = m.data, *end = m.data + m.size;
	if (m.size < 4) {
		rc = qs_err(err, QS_EFORMAT, "%s: %zu bytes, too short for max_token_length",
			    path, m.size);
		goto fail;
	}
	int32_t max_len = (int32_t)(uint32_t)load_le(p, 4);
	p += 4;
	if (max_len <= 0 || max_len > L2C_MAX_TOKEN) {
		rc = qs_err(err, QS_EFORMAT, "%s: max_token_length %d out of range (1..%d)", path,
			    (int)max_len, L2C_MAX_TOKEN);
		goto fail;
	}
	/* Each piece takes at least 9 bytes: score, length, one byte. */
	if ((size_t)vocab_size > (m.size - 4) / 9) {
		rc = qs_err(err, QS_EFORMAT,
			    "%s: %zu bytes cannot hold %d pieces (vocab_size mismatch?)", path,
			    m.size, vocab_size);
		goto fail;
	}
	if (!(v = tok_new(vocab_size, err))) {
		rc = err ? err->code : QS_ENOMEM;
		goto fail;
	}
	piece = malloc(3 * (size_t)max_len + 1);
	if (!piece) {
		rc = qs_err(err, QS_ENOMEM, "%s: out of memory", path);
		goto fail;
	}
	for (int i = 0; i < vocab_size; i++) {
		size_t off = (size_t)(p - m.data);
		if ((size_t)(end - p) < 8) {
			rc = qs_err(err, QS_EFORMAT, "%s: piece %d: header at byte %zu past end of file",
				    path, i, off);
			goto fail;
		}
		uint32_t bits = (uint32_t)load_le(p, 4);
		int32_t len = (int32_t)(uint32_t)load_le(p + 4, 4);
		float score;
		memcpy(&score, &bits, sizeof(score));
		p += 8;
		if (len <= 0 || len > max_len) {
			rc = qs_err(err, QS_EFORMAT,
				    "%s: piece %d: length %d out of range (1..max_token_length %d)",
				    path, i, (int)len, (int)max_len);
			goto fail;
		}
		if ((size_t)(end - p) < (size_t)len) {
			rc = qs_err(err, QS_EFORMAT, "%s: piece %d: length %d past end of file", path,
				    i, (int)len);
			goto fail;
		}
		/* llama2.c's export wrote U+2581 as ' ' and BOS/EOS as "\n<s>\n". */
		const char *t = (const char *)p;
		size_t n = (size_t)len, k = 0;
		p += len;
		if ((i == 1 && n == 5 && memcmp(t, "\n<s>\n", 5) == 0) ||
		    (i == 2 && n == 6 && memcmp(t, "\n</s>\n", 6) == 0)) {
			t++;
			n -= 2;
		}
		for (size_t j = 0; j < n; j++) {
			if (t[j] == ' ') {
				memcpy(piece + k, SPACE_SYM, 3);
				k += 3;
			} else {
				piece[k++] = t[j];
			}
		}
		int type = i == 0 ? TOK_UNKNOWN
			   : i <= 2 ? TOK_CONTROL
			   : byte_of_piece(piece, k) >= 0 ? TOK_BYTE : TOK_NORMAL;
		if ((rc = vocab_set(v, i, piece, k, score, type, path, err)))
			goto fail;
	}
	if (p != end) {
		rc = qs_err(err, QS_EFORMAT,
			    "%s: %zu bytes after piece %d (vocab_size %d mismatch?)", path,
			    (size_t)(end - p), vocab_size - 1, vocab_size);
		goto fail;
	}
	if ((rc = tok_finish(v, vocab_size > 1 ? 1 : -1, vocab_size > 2 ? 2 : -1, 0, 1, path,
			     err)))
		goto fail;
	free(piece);
	qs_map_close(&m);
	*out = v;
	return 0;
fail:
	free(piece);
	tok_free(v);
	qs_map_close(&m);
	return rc;
}
