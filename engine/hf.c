/* placeholder until the Hugging Face loader lands */
#include "model.h"
int model_load_hf(const char *dir, model **out, qs_error *err)
{
	*out = NULL;
	return qs_err(err, QS_EUNSUPP, "%s: hugging face folders not supported yet", dir);
}
