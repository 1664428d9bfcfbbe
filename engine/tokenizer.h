/* tokenizer.h - SentencePiece BPE tokenizer as used by Llama 1/2 (and the
 * debdoc demo model): identity normalisation, dummy prefix, spaces as U+2581,
 * score-ordered pair merges, byte fallback to <0xNN> pieces.
 *
 * A vocabulary is built either piece by piece (tok_new + tok_set + tok_finish,
 * e.g. from GGUF metadata) or read from a file (tok_load_spm for a
 * SentencePiece tokenizer.model, tok_load_llama2c for llama2.c's
 * tokenizer.bin). Encoding matches the sentencepiece library id for id. */
#ifndef QS_TOKENIZER_H
#define QS_TOKENIZER_H

#include <stddef.h>

#include "error.h"

typedef struct tok_vocab tok_vocab;

/* Piece types, numbered as SentencePiece's ModelProto.SentencePiece.Type and
 * GGUF's tokenizer.ggml.token_type. */
enum tok_type {
	TOK_NORMAL = 1,
	TOK_UNKNOWN = 2,
	TOK_CONTROL = 3,
	TOK_USER_DEFINED = 4,
	TOK_UNUSED = 5,
	TOK_BYTE = 6,
};

/* A vocabulary of n pieces, all unset. Caller frees with tok_free. */
tok_vocab *tok_new(int n, qs_error *err);
/* Set piece id (0 <= id < n). piece is len bytes of UTF-8 (copied). */
int tok_set(tok_vocab *v, int id, const char *piece, size_t len, float score,
	    int type, qs_error *err);
/* Validate and index the vocabulary. bos/eos/unk may be -1 (absent).
 * src names the origin for error messages (a file name). */
int tok_finish(tok_vocab *v, int bos, int eos, int unk, int add_dummy_prefix,
	       const char *src, qs_error *err);

/* Read a SentencePiece tokenizer.model (protobuf ModelProto): pieces, scores,
 * types, normalizer add_dummy_prefix, special ids. Only BPE models with the
 * identity normalizer are accepted; others get a clear error. */
int tok_load_spm(const char *path, tok_vocab **out, qs_error *err);
/* Read a llama2.c tokenizer.bin for a model with vocab_size pieces. */
int tok_load_llama2c(const char *path, int vocab_size, tok_vocab **out, qs_error *err);

void tok_free(tok_vocab *v);

int tok_n_vocab(const tok_vocab *v);
int tok_bos(const tok_vocab *v); /* -1 if none */
int tok_eos(const tok_vocab *v);
const char *tok_piece(const tok_vocab *v, int id, size_t *len); /* borrowed */
float tok_score(const tok_vocab *v, int id);
int tok_type_of(const tok_vocab *v, int id);

/* Encode len bytes of text; BOS first when add_bos. *ids is malloc'd, caller
 * frees. Works on whole files (hundreds of thousands of tokens) in O(n log n). */
int tok_encode(const tok_vocab *v, const char *text, size_t len, int add_bos,
	       int **ids, size_t *n_ids, qs_error *err);

/* Text of token id when it follows token prev (prev = -1 or BOS at the start:
 * the dummy-prefix space of the first word is dropped, as SentencePiece
 * decoding does). Byte pieces <0xNN> yield the raw byte; U+2581 becomes ' ';
 * control pieces yield "". Writes at most cap-1 bytes plus NUL into buf and
 * returns the length written. */
size_t tok_decode(const tok_vocab *v, int prev, int id, char *buf, size_t cap);

#endif
