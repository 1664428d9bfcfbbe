/* chat_tmpl.c - see chat_tmpl.h. */
#include "chat_tmpl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[CHAT_TMPL_N] = { "none", "llama2", "chatml", "llama3" };

const char *chat_tmpl_name(int kind)
{
	return kind >= 0 && kind < CHAT_TMPL_N ? names[kind] : "?";
}

int chat_tmpl_parse(const char *name, int *kind, qs_error *err)
{
	if (name && !strcmp(name, "auto")) {
		*kind = -1;
		return 0;
	}
	for (int k = 0; name && k < CHAT_TMPL_N; k++)
		if (!strcmp(name, names[k])) {
			*kind = k;
			return 0;
		}
	return qs_err(err, QS_EUSAGE, "chat template '%s': expected auto, none, llama2, chatml or llama3",
		      name ? name : "");
}

int chat_tmpl_detect(const char *jinja)
{
	if (!jinja)
		return CHAT_TMPL_NONE;
	if (strstr(jinja, "<|start_header_id|>"))
		return CHAT_TMPL_LLAMA3;
	if (strstr(jinja, "<|im_start|>"))
		return CHAT_TMPL_CHATML;
	if (strstr(jinja, "[INST]"))
		return CHAT_TMPL_LLAMA2;
	return CHAT_TMPL_NONE;
}

int chat_tmpl_writes_bos(int kind)
{
	return kind == CHAT_TMPL_LLAMA2;
}

/* a growing string */
typedef struct sbuf {
	char *s;
	size_t n, cap;
	int oom;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int need = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (b->oom || need < 0)
		return;
	if (b->n + (size_t)need + 1 > b->cap) {
		size_t cap = (b->n + (size_t)need + 1) * 2;
		char *s = realloc(b->s, cap);
		if (!s) {
			b->oom = 1;
			return;
		}
		b->s = s;
		b->cap = cap;
	}
	va_start(ap, fmt);
	vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
	va_end(ap);
	b->n += (size_t)need;
}

static int role_of(const char *r)
{
	return !r ? -1 : !strcmp(r, "system") ? 0 : !strcmp(r, "user") ? 1 : !strcmp(r, "assistant") ? 2 : -1;
}

int chat_tmpl_apply(int kind, const chat_msg *msgs, int n, char **out, qs_error *err)
{
	*out = NULL;
	if (kind < 0 || kind >= CHAT_TMPL_N)
		return qs_err(err, QS_EUSAGE, "chat template %d unknown", kind);
	for (int i = 0; i < n; i++) {
		int r = role_of(msgs[i].role);
		if (r < 0)
			return qs_err(err, QS_EUSAGE, "chat message %d: role '%s' (system, user or assistant)", i,
				      msgs[i].role ? msgs[i].role : "");
		if (r == 0 && i > 0)
			return qs_err(err, QS_EUSAGE, "chat message %d: the system message must come first", i);
		if (!msgs[i].text)
			return qs_err(err, QS_EUSAGE, "chat message %d: no text", i);
	}
	sbuf b = { 0 };
	sb_add(&b, "%s", "");
	const int has_sys = n > 0 && role_of(msgs[0].role) == 0;
	switch (kind) {
	case CHAT_TMPL_NONE:
		for (int i = 0; i < n; i++)
			sb_add(&b, "%s%s", i ? "\n" : "", msgs[i].text);
		break;
	case CHAT_TMPL_LLAMA2: {
		/* user and assistant alternate from the first user message; the
		 * system text goes inside the first [INST] */
		int want = 1;
		for (int i = has_sys; i < n; i++) {
			int r = role_of(msgs[i].role);
			if (r != want) {
				free(b.s);
				return qs_err(err, QS_EUSAGE,
					      "chat message %d: llama2 needs user and assistant turns in turn (got %s)",
					      i, msgs[i].role);
			}
			if (r == 1) {
				sb_add(&b, "<s>[INST] ");
				if (has_sys && i == 1)
					sb_add(&b, "<<SYS>>\n%s\n<</SYS>>\n\n", msgs[0].text);
				sb_add(&b, "%s [/INST]", msgs[i].text);
			} else {
				sb_add(&b, " %s </s>", msgs[i].text);
			}
			want = r == 1 ? 2 : 1;
		}
		break;
	}
	case CHAT_TMPL_CHATML:
		for (int i = 0; i < n; i++)
			sb_add(&b, "<|im_start|>%s\n%s<|im_end|>\n", msgs[i].role, msgs[i].text);
		sb_add(&b, "<|im_start|>assistant\n");
		break;
	case CHAT_TMPL_LLAMA3:
		for (int i = 0; i < n; i++)
			sb_add(&b, "<|start_header_id|>%s<|end_header_id|>\n\n%s<|eot_id|>", msgs[i].role,
			       msgs[i].text);
		sb_add(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
		break;
	}
	if (b.oom) {
		free(b.s);
		return qs_err(err, QS_ENOMEM, "chat template: out of memory");
	}
	*out = b.s;
	return 0;
}

/* ids of the control pieces (2 bytes or more), longest first */
typedef struct special {
	int id;
	const char *s;
	size_t len;
} special;

static int special_cmp(const void *a, const void *b)
{
	const special *x = a, *y = b;
	return x->len != y->len ? (x->len < y->len ? 1 : -1) : (x->id > y->id) - (x->id < y->id);
}

static int find_piece(const tok_vocab *v, const char *s)
{
	size_t n = strlen(s);
	for (int id = 0; id < tok_n_vocab(v); id++) {
		size_t len;
		const char *p = tok_piece(v, id, &len);
		if (p && len == n && !memcmp(p, s, n))
			return id;
	}
	return -1;
}

static int append_ids(int **ids, size_t *n, size_t *cap, const int *add, size_t k)
{
	if (*n + k > *cap) {
		size_t c = (*n + k) * 2 + 16;
		int *p = realloc(*ids, sizeof(int) * c);
		if (!p)
			return -1;
		*ids = p;
		*cap = c;
	}
	memcpy(*ids + *n, add, sizeof(int) * k);
	*n += k;
	return 0;
}

int tok_encode_special(const tok_vocab *v, const char *text, size_t len, int add_bos, int **ids,
		       size_t *n_ids, qs_error *err)
{
	*ids = NULL;
	*n_ids = 0;
	const int nv = tok_n_vocab(v);
	special *sp = malloc(sizeof(*sp) * (size_t)(nv ? nv : 1));
	int n_sp = 0;
	if (!sp)
		return qs_err(err, QS_ENOMEM, "tokenize: out of memory");
	for (int id = 0; id < nv; id++) {
		size_t pl;
		const char *p = tok_piece(v, id, &pl);
		if (p && pl >= 2 && tok_type_of(v, id) == TOK_CONTROL)
			sp[n_sp++] = (special){ id, p, pl };
	}
	qsort(sp, (size_t)n_sp, sizeof(*sp), special_cmp);
	int *out = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	if (add_bos && tok_bos(v) >= 0) {
		int b = tok_bos(v);
		if (append_ids(&out, &n, &cap, &b, 1))
			rc = qs_err(err, QS_ENOMEM, "tokenize: out of memory");
	}
	size_t a = 0; /* start of the pending plain text */
	for (size_t i = 0; i <= len && !rc; i++) {
		int hit = -1;
		for (int k = 0; i < len && k < n_sp && hit < 0; k++)
			if (sp[k].len <= len - i && !memcmp(text + i, sp[k].s, sp[k].len))
				hit = k;
		if (hit < 0 && i < len)
			continue;
		if (i > a) { /* the plain text before it */
			int *seg = NULL;
			size_t ns = 0;
			rc = tok_encode(v, text + a, i - a, 0, &seg, &ns, err);
			if (!rc && append_ids(&out, &n, &cap, seg, ns))
				rc = qs_err(err, QS_ENOMEM, "tokenize: out of memory");
			free(seg);
		}
		if (!rc && hit >= 0) {
			if (append_ids(&out, &n, &cap, &sp[hit].id, 1))
				rc = qs_err(err, QS_ENOMEM, "tokenize: out of memory");
			i += sp[hit].len - 1;
			a = i + 1;
		}
	}
	free(sp);
	if (rc) {
		free(out);
		return rc;
	}
	if (!out && !(out = malloc(sizeof(int))))
		return qs_err(err, QS_ENOMEM, "tokenize: out of memory");
	*ids = out;
	*n_ids = n;
	return 0;
}

int chat_tmpl_stops(int kind, const tok_vocab *v, int *stops, int cap)
{
	int n = 0;
	if (tok_eos(v) >= 0 && n < cap)
		stops[n++] = tok_eos(v);
	const char *extra = kind == CHAT_TMPL_CHATML ? "<|im_end|>" : kind == CHAT_TMPL_LLAMA3 ? "<|eot_id|>" : NULL;
	int id = extra ? find_piece(v, extra) : -1;
	if (id >= 0 && n < cap && (n == 0 || stops[0] != id))
		stops[n++] = id;
	return n;
}

int chat_tmpl_prompt(int kind, const tok_vocab *v, const char *text, int **ids, size_t *n_ids,
		     qs_error *err)
{
	if (kind == CHAT_TMPL_NONE)
		return tok_encode(v, text, strlen(text), 1, ids, n_ids, err);
	char *full = NULL;
	chat_msg msg = { "user", text };
	int rc = chat_tmpl_apply(kind, &msg, 1, &full, err);
	if (!rc)
		rc = tok_encode_special(v, full, strlen(full), !chat_tmpl_writes_bos(kind), ids, n_ids, err);
	free(full);
	return rc;
}
