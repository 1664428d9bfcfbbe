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
 * The file readers are in tokenizer_files.c. */
#include "tokenizer.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_priv.h"

#define REPLACEMENT "\xef\xbf\xbd"    /* U+FFFD, for malformed UTF-8 */
#define UNK_SURFACE " \xe2\x81\x87 "  /* sentencepiece's text for <unk> */


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

int tok_byte_of_piece(const char *s, size_t n)
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

const char *tok_quote(const char *s, size_t n, char *buf, size_t cap)
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
int tok_set_src(tok_vocab *v, int id, const char *piece, size_t len, float score,
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
	return tok_set_src(v, id, piece, len, score, type, "tokenizer", err);
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
				      i, tok_quote(v->text[i], v->len[i], q, sizeof(q)), (int)dup);
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
		int b = tok_byte_of_piece(v->text[i], v->len[i]);
		if (b < 0)
			return qs_err(err, QS_EFORMAT,
				      "%s: piece %d '%s' has type byte but is not spelled <0xNN>",
				      src, i, tok_quote(v->text[i], v->len[i], q, sizeof(q)));
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
			      "nor byte pieces", tok_quote(e->norm + start, len, q, sizeof(q)));
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
		int b = tok_byte_of_piece(s, n);
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
