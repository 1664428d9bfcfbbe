/* tokenizer_priv.h - what tokenizer.c shares with the file readers in
 * tokenizer_files.c; not for other modules. */
#ifndef QS_TOKENIZER_PRIV_H
#define QS_TOKENIZER_PRIV_H

#include <stddef.h>

#include "error.h"
#include "tokenizer.h"

#define SPACE_SYM "\xe2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK: SentencePiece's space */

enum {
	TOK_MAX_N = 1 << 24,      /* pieces in a vocabulary */
	TOK_MAX_PIECE = 1 << 18,  /* bytes in one piece */
	L2C_MAX_TOKEN = 1 << 16,  /* llama2.c max_token_length */
	PB_MAX_DEPTH = 64,        /* nested protobuf groups */
};

/* tok_set with src (a file name) naming the origin in error messages. */
int tok_set_src(tok_vocab *v, int id, const char *piece, size_t len, float score,
		int type, const char *src, qs_error *err);
/* 0..255 for a piece spelled exactly <0xNN> (upper-case hex), else -1. */
int tok_byte_of_piece(const char *s, size_t n);
/* A piece quoted for an error message into buf: at most 40 bytes, control
 * bytes and quotes as \xNN. Returns buf. */
const char *tok_quote(const char *s, size_t n, char *buf, size_t cap);

#endif
