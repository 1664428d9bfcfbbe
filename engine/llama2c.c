/* placeholder until the llama2.c loader lands */
#include "model.h"
int model_load_llama2c(const char *path, const char *tokenizer_path, model **out, qs_error *err)
{
	(void)tokenizer_path;
	*out = NULL;
	return qs_err(err, QS_EUNSUPP, "%s: llama2.c checkpoints not supported yet", path);
}
