/* placeholder until AWQ / SmoothQuant land */
#include "quant.h"
int quant_awq_scales(const float *X, long n, const float *const *W, const int *rows, int n_w, int cols, const quant_spec *s, float *scales, float *alpha_out, qs_error *err)
{
	(void)X; (void)n; (void)W; (void)rows; (void)n_w; (void)cols; (void)s; (void)scales; (void)alpha_out;
	return qs_err(err, QS_EUNSUPP, "awq: not implemented yet");
}
int quant_awq_clip(const float *X, long n, const float *W, int rows, int cols, const quant_spec *s, float *Wc, qs_error *err)
{
	(void)X; (void)n; (void)W; (void)rows; (void)cols; (void)s; (void)Wc;
	return qs_err(err, QS_EUNSUPP, "awq: not implemented yet");
}
void quant_smooth_scales(const float *x_absmax, const float *const *W, const int *rows, int n_w, int cols, float alpha, float *scales)
{
	(void)x_absmax; (void)W; (void)rows; (void)n_w; (void)alpha;
	for (int j = 0; j < cols; j++) scales[j] = 1.0f;
}
