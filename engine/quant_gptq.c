/* placeholder until GPTQ lands */
#include "quant.h"
int quant_gptq(kn_qmatrix *q, const float *W, const double *H, long n, const quant_spec *s, qs_error *err)
{
	(void)q; (void)W; (void)H; (void)n; (void)s;
	return qs_err(err, QS_EUNSUPP, "gptq: not implemented yet");
}
