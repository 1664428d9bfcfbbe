/* placeholder until the GGUF loader lands */
#include "model.h"
int model_load_gguf(const char *path, model **out, qs_error *err)
{
	*out = NULL;
	return qs_err(err, QS_EUNSUPP, "%s: gguf not supported yet", path);
}
