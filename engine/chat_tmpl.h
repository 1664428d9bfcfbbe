/* chat_tmpl.h - chat templates: the prompt formats that instruction-tuned
 * Llama-family models were trained on, recognised from the model's own
 * template (GGUF tokenizer.chat_template, or chat_template in a Hugging Face
 * folder's tokenizer_config.json), and tokenization that turns the
 * template's special tokens into their single ids.
 *
 * The formats, as their model cards define them (one system message, then
 * user / assistant turns; the text ends with the assistant's header so the
 * model writes the next turn):
 *
 *   llama2   <s>[INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ANSWER </s>
 *            <s>[INST] USER [/INST]
 *   chatml   <|im_start|>system\nSYSTEM<|im_end|>\n<|im_start|>user\nUSER<|im_end|>\n
 *            <|im_start|>assistant\n
 *   llama3   <|start_header_id|>system<|end_header_id|>\n\nSYSTEM<|eot_id|>
 *            <|start_header_id|>user<|end_header_id|>\n\nUSER<|eot_id|>
 *            <|start_header_id|>assistant<|end_header_id|>\n\n
 *
 * llama2 writes its <s> itself; chatml and llama3 leave BOS to the
 * tokenizer (llama3's BOS is <|begin_of_text|>). Base models (no template,
 * e.g. debdoc) get plain completion: the prompt as it is. */
#ifndef QS_CHAT_TMPL_H
#define QS_CHAT_TMPL_H

#include <stddef.h>

#include "error.h"
#include "tokenizer.h"

enum chat_tmpl_kind {
	CHAT_TMPL_NONE = 0, /* plain completion */
	CHAT_TMPL_LLAMA2,
	CHAT_TMPL_CHATML,
	CHAT_TMPL_LLAMA3,
	CHAT_TMPL_N,
};

/* "none", "llama2", "chatml", "llama3" */
const char *chat_tmpl_name(int kind);
/* One of those names, or "auto" (*kind = -1: detect from the model). */
int chat_tmpl_parse(const char *name, int *kind, qs_error *err);
/* The kind of a model's Jinja template, recognised by the markers each
 * format writes ([INST], <|im_start|>, <|start_header_id|>); NONE for NULL
 * or a template in none of these formats. */
int chat_tmpl_detect(const char *jinja);

typedef struct chat_msg {
	const char *role; /* "system", "user" or "assistant" */
	const char *text;
} chat_msg;

/* The conversation msgs[0..n) in the format, ending with the assistant's
 * header; *out is malloc'd. NONE joins the texts with newlines. Errors: an
 * unknown role, a system message that is not first, llama2's turns out of
 * user/assistant order. */
int chat_tmpl_apply(int kind, const chat_msg *msgs, int n, char **out, qs_error *err);
/* Does the format's text carry BOS itself (llama2's <s>)? */
int chat_tmpl_writes_bos(int kind);

/* Tokenize text in which control and user-defined pieces written out
 * literally ("<|im_start|>", "<s>") stand for their ids, as llama.cpp does
 * with special-token parsing: the text between them is encoded as usual
 * (with the dummy-prefix space after every special token). BOS first when
 * add_bos. *ids malloc'd. */
int tok_encode_special(const tok_vocab *v, const char *text, size_t len, int add_bos, int **ids,
		       size_t *n_ids, qs_error *err);

/* The ids to generate from for one user message: plain completion (BOS +
 * the text) for NONE, else the message as one user turn in the format,
 * with BOS unless the format writes it. *ids malloc'd. */
int chat_tmpl_prompt(int kind, const tok_vocab *v, const char *text, int **ids, size_t *n_ids,
		     qs_error *err);

/* Ids that end the assistant's turn: EOS, and <|im_end|> / <|eot_id|> when
 * the vocabulary has them. Returns how many were written (at most cap). */
int chat_tmpl_stops(int kind, const tok_vocab *v, int *stops, int cap);

#endif
