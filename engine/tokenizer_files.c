/* tokenizer_files.c - the tokenizer file readers (see tokenizer.h): a
 * SentencePiece tokenizer.model (protobuf ModelProto) and llama2.c's
 * tokenizer.bin. Each builds a vocabulary through tok_new/tok_set_src/
 * tok_finish and checks every length against the end of the mapped file. */
#include "tokenizer.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapfile.h"
#include "tokenizer_priv.h"

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
	return tok_set_src(v, id, (const char *)text, len, score, (int)type, r.path, err);
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
			    sp.name ? tok_quote((const char *)sp.name, sp.name_len, q, sizeof(q))
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
	for (int i = 0; i < tok_n_vocab(v); i++)
		n_bytes += tok_type_of(v, i) == TOK_BYTE;
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
	const int n_vocab = tok_n_vocab(v);
	if (sp.unk_id < 0 || sp.unk_id >= n_vocab || tok_type_of(v, sp.unk_id) != TOK_UNKNOWN) {
		rc = qs_err(err, QS_EFORMAT, "%s: trainer_spec.unk_id %d is not an unknown piece",
			    path, (int)sp.unk_id);
		goto fail;
	}
	/* As sentencepiece's bos_id()/eos_id(): -1 unless a control piece. */
	int bos = sp.bos_id >= 0 && sp.bos_id < n_vocab && tok_type_of(v, sp.bos_id) == TOK_CONTROL
			  ? sp.bos_id : -1;
	int eos = sp.eos_id >= 0 && sp.eos_id < n_vocab && tok_type_of(v, sp.eos_id) == TOK_CONTROL
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
			   : tok_byte_of_piece(piece, k) >= 0 ? TOK_BYTE : TOK_NORMAL;
		if ((rc = tok_set_src(v, i, piece, k, score, type, path, err)))
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
