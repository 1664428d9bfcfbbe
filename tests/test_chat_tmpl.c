/* test_chat_tmpl.c - chat templates: the formats as their model cards write
 * them (the expected strings below are typed from those cards, not printed
 * by the code), recognition of real templates, special-token tokenization
 * against llama.cpp's rule (special pieces become their ids, the text
 * between them is encoded as plain text), and the model loaders reading a
 * template from GGUF and from a Hugging Face folder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "../engine/chat_tmpl.h"
#include "../engine/gguf.h"
#include "../engine/model.h"
#include "../engine/tokenizer.h"
#include "testutil.h"

static const chat_msg conv[] = {
	{ "system", "Be brief." },
	{ "user", "What is dpkg?" },
	{ "assistant", "A package manager." },
	{ "user", "And apt?" },
};

static void expect_apply(int kind, const chat_msg *m, int n, const char *want)
{
	char *got = NULL;
	qs_error err = { 0 };
	assert_int_equal(chat_tmpl_apply(kind, m, n, &got, &err), 0);
	if (strcmp(got, want))
		fail_msg("%s:\n got  [%s]\n want [%s]", chat_tmpl_name(kind), got, want);
	free(got);
}

static void test_formats(void **s)
{
	(void)s;
	/* Llama 2 chat (Meta's model card): the system prompt inside the first
	 * [INST] between <<SYS>> markers, each exchange wrapped in <s> ... </s> */
	expect_apply(CHAT_TMPL_LLAMA2, conv, 4,
		     "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is dpkg? [/INST] A package manager. </s>"
		     "<s>[INST] And apt? [/INST]");
	expect_apply(CHAT_TMPL_LLAMA2, conv + 1, 1, "<s>[INST] What is dpkg? [/INST]");
	/* ChatML: <|im_start|>role\ncontent<|im_end|>\n, then the assistant's header */
	expect_apply(CHAT_TMPL_CHATML, conv, 2,
		     "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is dpkg?<|im_end|>\n"
		     "<|im_start|>assistant\n");
	/* Llama 3: header ids around the role, a blank line, <|eot_id|> */
	expect_apply(CHAT_TMPL_LLAMA3, conv, 2,
		     "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
		     "<|start_header_id|>user<|end_header_id|>\n\nWhat is dpkg?<|eot_id|>"
		     "<|start_header_id|>assistant<|end_header_id|>\n\n");
	/* plain completion: the text as it is */
	expect_apply(CHAT_TMPL_NONE, conv + 1, 1, "What is dpkg?");
	assert_true(chat_tmpl_writes_bos(CHAT_TMPL_LLAMA2));
	assert_false(chat_tmpl_writes_bos(CHAT_TMPL_CHATML) || chat_tmpl_writes_bos(CHAT_TMPL_LLAMA3));
}

static void test_bad_conversations(void **s)
{
	(void)s;
	char *out = NULL;
	qs_error err = { 0 };
	const chat_msg late_sys[] = { { "user", "a" }, { "system", "b" } };
	assert_int_equal(chat_tmpl_apply(CHAT_TMPL_CHATML, late_sys, 2, &out, &err), QS_EUSAGE);
	assert_non_null(strstr(err.msg, "message 1"));
	const chat_msg bad_role[] = { { "robot", "a" } };
	assert_int_equal(chat_tmpl_apply(CHAT_TMPL_LLAMA3, bad_role, 1, &out, &err), QS_EUSAGE);
	assert_non_null(strstr(err.msg, "robot"));
	const chat_msg two_users[] = { { "user", "a" }, { "user", "b" } };
	assert_int_equal(chat_tmpl_apply(CHAT_TMPL_LLAMA2, two_users, 2, &out, &err), QS_EUSAGE);
	assert_null(out);
	int k;
	assert_int_equal(chat_tmpl_parse("auto", &k, &err), 0);
	assert_int_equal(k, -1);
	assert_int_equal(chat_tmpl_parse("chatml", &k, &err), 0);
	assert_int_equal(k, CHAT_TMPL_CHATML);
	assert_int_equal(chat_tmpl_parse("vicuna", &k, &err), QS_EUSAGE);
	assert_non_null(strstr(err.msg, "vicuna"));
}

/* excerpts of the templates shipped with Llama-2-chat, a ChatML model and
 * Llama-3-Instruct (tokenizer_config.json / tokenizer.chat_template) */
static void test_detect(void **s)
{
	(void)s;
	assert_int_equal(chat_tmpl_detect("{% for message in messages %}{% if message['role'] == 'user' %}"
					  "{{ bos_token + '[INST] ' + message['content'] | trim + ' [/INST]' }}"),
			 CHAT_TMPL_LLAMA2);
	assert_int_equal(chat_tmpl_detect("{% for message in messages %}{{'<|im_start|>' + message['role'] + "
					  "'\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"),
			 CHAT_TMPL_CHATML);
	assert_int_equal(chat_tmpl_detect("{% set content = '<|start_header_id|>' + message['role'] + "
					  "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"),
			 CHAT_TMPL_LLAMA3);
	assert_int_equal(chat_tmpl_detect("{{ messages[0]['content'] }}"), CHAT_TMPL_NONE);
	assert_int_equal(chat_tmpl_detect(NULL), CHAT_TMPL_NONE);
}

static model *debdoc;

static int setup(void **state)
{
	(void)state;
	qs_error err = { 0 };
	return model_open(tu_shared("models/debdoc-19m-f16.gguf"), NULL, &debdoc, &err);
}

static int teardown(void **state)
{
	(void)state;
	model_free(debdoc);
	return 0;
}

static int *enc(const tok_vocab *v, const char *t, size_t *n)
{
	int *ids;
	qs_error err = { 0 };
	assert_int_equal(tok_encode(v, t, strlen(t), 0, &ids, n, &err), 0);
	return ids;
}

/* <s> and </s> written in a Llama 2 prompt are the BOS and EOS ids; the
 * text between them is what tok_encode makes of it alone */
static void test_special_debdoc(void **s)
{
	(void)s;
	const tok_vocab *v = debdoc->tok;
	const char *t = "<s>[INST] What is dpkg? [/INST] A tool. </s><s>[INST] apt? [/INST]";
	int *ids;
	size_t n;
	qs_error err = { 0 };
	assert_int_equal(tok_encode_special(v, t, strlen(t), 0, &ids, &n, &err), 0);
	size_t na, nb, nc;
	int *a = enc(v, "[INST] What is dpkg? [/INST] A tool. ", &na);
	int *b = enc(v, "[INST] apt? [/INST]", &nb);
	assert_int_equal(n, 1 + na + 2 + nb);
	assert_int_equal(ids[0], tok_bos(v));
	assert_memory_equal(ids + 1, a, sizeof(int) * na);
	assert_int_equal(ids[1 + na], tok_eos(v));
	assert_int_equal(ids[2 + na], tok_bos(v));
	assert_memory_equal(ids + 3 + na, b, sizeof(int) * nb);
	free(ids);
	free(a);
	free(b);
	/* no special piece: the same as tok_encode, BOS included */
	int *c;
	assert_int_equal(tok_encode_special(v, "plain text", 10, 1, &ids, &n, &err), 0);
	assert_int_equal(tok_encode(v, "plain text", 10, 1, &c, &nc, &err), 0);
	assert_int_equal(n, nc);
	assert_memory_equal(ids, c, sizeof(int) * n);
	free(ids);
	free(c);
	/* debdoc has no chat template: plain completion */
	assert_null(debdoc->chat_template);
	int st[4];
	assert_int_equal(chat_tmpl_stops(CHAT_TMPL_NONE, v, st, 4), 1);
	assert_int_equal(st[0], tok_eos(v));
}

/* A vocabulary with ChatML's control pieces (as a ChatML fine-tune adds
 * them): byte pieces for everything else */
static void test_special_chatml(void **s)
{
	(void)s;
	qs_error err = { 0 };
	const char *ctl[] = { "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>" };
	tok_vocab *v = tok_new(5 + 256 + 1, &err);
	assert_non_null(v);
	for (int i = 0; i < 5; i++)
		assert_int_equal(tok_set(v, i, ctl[i], strlen(ctl[i]), 0, i ? TOK_CONTROL : TOK_UNKNOWN, &err), 0);
	for (int b = 0; b < 256; b++) {
		char p[8];
		snprintf(p, sizeof(p), "<0x%02X>", b);
		assert_int_equal(tok_set(v, 5 + b, p, 6, 0, TOK_BYTE, &err), 0);
	}
	assert_int_equal(tok_set(v, 261, "\xe2\x96\x81", 3, -1, TOK_NORMAL, &err), 0);
	assert_int_equal(tok_finish(v, 1, 2, 0, 1, "test", &err), 0);
	char *t;
	const chat_msg m[] = { { "user", "hi" } };
	assert_int_equal(chat_tmpl_apply(CHAT_TMPL_CHATML, m, 1, &t, &err), 0);
	int *ids;
	size_t n;
	assert_int_equal(tok_encode_special(v, t, strlen(t), 1, &ids, &n, &err), 0);
	/* BOS, <|im_start|>, "user\nhi", <|im_end|>, "\n", <|im_start|>, "assistant\n" */
	int specials[16], ns = 0;
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 5)
			specials[ns++] = ids[i];
	assert_int_equal(ns, 4);
	const int want[4] = { 1, 3, 4, 3 };
	assert_memory_equal(specials, want, sizeof(want));
	/* the text between is bytes: "user\nhi" after the dummy-prefix space */
	size_t k = 2;
	assert_int_equal(ids[k++], 261); /* U+2581, the dummy prefix */
	for (const char *p = "user"; *p; p++)
		assert_int_equal(ids[k++], 5 + (unsigned char)*p);
	int st[4];
	assert_int_equal(chat_tmpl_stops(CHAT_TMPL_CHATML, v, st, 4), 2);
	assert_int_equal(st[0], 2);
	assert_int_equal(st[1], 4);
	free(ids);
	free(t);
	tok_free(v);
}

/* GGUF tokenizer.chat_template: debdoc's file with one more key */
static void test_gguf_template(void **s)
{
	(void)s;
	qs_error err = { 0 };
	gguf_file *g;
	gguf_writer *w = tu_gguf_copy_meta(tu_shared("models/debdoc-19m-f16.gguf"), &g);
	assert_non_null(w);
	const char *tmpl = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}";
	assert_int_equal(gguf_w_str(w, "tokenizer.chat_template", tmpl), 0);
	for (int i = 0; i < gguf_n_tensors(g); i++) {
		const gguf_tensor_info *t = gguf_tensor(g, i);
		char name[128];
		snprintf(name, sizeof(name), "%.*s", (int)t->name.len, t->name.s);
		assert_int_equal(gguf_w_tensor(w, name, t->type, t->n_dims, t->ne, t->data, t->nbytes), 0);
	}
	char *path = tu_tmppath("chatml.gguf");
	assert_int_equal(gguf_writer_write(w, path, &err), 0);
	gguf_writer_free(w);
	gguf_close(g);
	model *m;
	assert_int_equal(model_open(path, NULL, &m, &err), 0);
	assert_non_null(m->chat_template);
	assert_string_equal(m->chat_template, tmpl);
	assert_int_equal(chat_tmpl_detect(m->chat_template), CHAT_TMPL_CHATML);
	model_free(m);
}

/* A Hugging Face folder's tokenizer_config.json: a string, a named list,
 * and a wrong type named in the error */
static void test_hf_template(void **s)
{
	(void)s;
	char *src = realpath(tu_shared("models/debdoc-19m-hf"), NULL); /* the links must not be relative */
	char dir[1024], cmd[4096];
	assert_non_null(src);
	snprintf(dir, sizeof(dir), "%s", tu_tmppath("hf"));
	snprintf(cmd, sizeof(cmd), "mkdir -p %s && for f in %s/*; do ln -sf \"$f\" %s/; done && rm %s/tokenizer_config.json",
		 dir, src, dir, dir);
	assert_int_equal(system(cmd), 0);
	free(src);
	const struct {
		const char *json;
		int rc, kind;
	} cases[] = {
		{ "{\"chat_template\": \"{{ '[INST] ' + m + ' [/INST]' }}\"}", 0, CHAT_TMPL_LLAMA2 },
		{ "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"x\"}, "
		  "{\"name\": \"default\", \"template\": \"<|start_header_id|>\"}]}", 0, CHAT_TMPL_LLAMA3 },
		{ "{\"bos_token\": \"<s>\"}", 0, CHAT_TMPL_NONE },
		/* as transformers writes it: an integer beyond 64 bits */
		{ "{\"model_max_length\": 1000000000000000019884624838656, \"chat_template\": \"<|im_start|>\"}",
		  0, CHAT_TMPL_CHATML },
		{ "{\"chat_template\": 42}", QS_EFORMAT, 0 },
	};
	char cfg[1100];
	snprintf(cfg, sizeof(cfg), "%s/tokenizer_config.json", dir);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		unlink(cfg);
		assert_int_equal(tu_write_file(cfg, cases[i].json, strlen(cases[i].json)), 0);
		model *m = NULL;
		qs_error err = { 0 };
		int rc = model_open(dir, NULL, &m, &err);
		if (rc != cases[i].rc)
			fail_msg("case %zu: rc %d (%s), want %d", i, rc, err.msg, cases[i].rc);
		if (rc) {
			assert_non_null(strstr(err.msg, "tokenizer_config.json"));
			assert_non_null(strstr(err.msg, "chat_template"));
			continue;
		}
		assert_int_equal(chat_tmpl_detect(m->chat_template), cases[i].kind);
		model_free(m);
	}
}

/* qscope generate --template llama2: the prompt ids are BOS and the
 * [INST] wrapping of the text, as tok_encode makes it */
static void test_generate_template(void **s)
{
	(void)s;
	char cmd[2048], *out = NULL;
	snprintf(cmd, sizeof(cmd), "%s generate -m %s -p 'What is dpkg?' --template llama2 -n 0 --json",
		 tu_bin(), tu_shared("models/debdoc-19m-f16.gguf"));
	assert_int_equal(tu_run(cmd, tu_tmppath("gen.err"), &out), 0);
	size_t n;
	int *want = enc(debdoc->tok, "[INST] What is dpkg? [/INST]", &n);
	json_error_t je;
	json_t *j = json_loads(out, 0, &je), *ids = json_object_get(j, "ids");
	assert_non_null(ids);
	assert_int_equal(json_array_size(ids), 1 + n);
	assert_int_equal(json_integer_value(json_array_get(ids, 0)), tok_bos(debdoc->tok));
	for (size_t i = 0; i < n; i++)
		assert_int_equal(json_integer_value(json_array_get(ids, i + 1)), want[i]);
	json_decref(j);
	free(want);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s generate -m %s -p x --template vicuna", tu_bin(),
		 tu_shared("models/debdoc-19m-f16.gguf"));
	assert_int_equal(tu_run(cmd, tu_tmppath("gen.err"), NULL), 1);
	char *e = tu_read_file(tu_tmppath("gen.err"), &n);
	assert_non_null(e);
	assert_non_null(strstr(e, "--template"));
	assert_non_null(strstr(e, "vicuna"));
	free(e);
}

int main(void)
{
	const struct CMUnitTest t[] = {
		cmocka_unit_test(test_formats),
		cmocka_unit_test(test_bad_conversations),
		cmocka_unit_test(test_detect),
		cmocka_unit_test(test_special_debdoc),
		cmocka_unit_test(test_special_chatml),
		cmocka_unit_test(test_gguf_template),
		cmocka_unit_test(test_hf_template),
		cmocka_unit_test(test_generate_template),
	};
	return cmocka_run_group_tests(t, setup, teardown);
}
