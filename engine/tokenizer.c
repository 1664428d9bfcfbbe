/* placeholder until the tokenizer lands */
#include "tokenizer.h"
#include <stdlib.h>
tok_vocab *tok_new(int n, qs_error *err) { (void)n; qs_err(err, QS_EUNSUPP, "tokenizer: not yet"); return NULL; }
int tok_set(tok_vocab *v, int id, const char *piece, size_t len, float score, int type, qs_error *err) { (void)v; (void)id; (void)piece; (void)len; (void)score; (void)type; return qs_err(err, QS_EUNSUPP, "tokenizer: not yet"); }
int tok_finish(tok_vocab *v, int bos, int eos, int unk, int adp, const char *src, qs_error *err) { (void)v; (void)bos; (void)eos; (void)unk; (void)adp; (void)src; return qs_err(err, QS_EUNSUPP, "tokenizer: not yet"); }
int tok_load_spm(const char *path, tok_vocab **out, qs_error *err) { *out = NULL; return qs_err(err, QS_EUNSUPP, "%s: not yet", path); }
int tok_load_llama2c(const char *path, int vs, tok_vocab **out, qs_error *err) { (void)vs; *out = NULL; return qs_err(err, QS_EUNSUPP, "%s: not yet", path); }
void tok_free(tok_vocab *v) { (void)v; }
int tok_n_vocab(const tok_vocab *v) { (void)v; return 0; }
int tok_bos(const tok_vocab *v) { (void)v; return -1; }
int tok_eos(const tok_vocab *v) { (void)v; return -1; }
const char *tok_piece(const tok_vocab *v, int id, size_t *len) { (void)v; (void)id; *len = 0; return ""; }
float tok_score(const tok_vocab *v, int id) { (void)v; (void)id; return 0; }
int tok_type_of(const tok_vocab *v, int id) { (void)v; (void)id; return 0; }
int tok_encode(const tok_vocab *v, const char *t, size_t len, int add_bos, int **ids, size_t *n, qs_error *err) { (void)v; (void)t; (void)len; (void)add_bos; *ids = NULL; *n = 0; return qs_err(err, QS_EUNSUPP, "tokenizer: not yet"); }
size_t tok_decode(const tok_vocab *v, int prev, int id, char *buf, size_t cap) { (void)v; (void)prev; (void)id; if (cap) buf[0] = 0; return 0; }
