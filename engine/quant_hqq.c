/* placeholder until HQQ lands */
#include "quant.h"
int quant_hqq(kn_qmatrix *q, const float *W, const quant_spec *s, qs_error *err)
{
	(void)q; (void)W; (void)s;
	return qs_err(err, QS_EUNSUPP, "hqq: not implemented yet");
}
