/* Pointwise (1x1) and fully connected backward: weight gradient for the trained input channels,
 * input gradient as the transposed product. */
#include "tb_train.h"
#include "tb_grad.h"

tb_status tb_pointwise_weight_grad_s8(int32_t n_pos, int32_t in_c, const int8_t *x,
                                      int32_t input_offset, int32_t out_c, const int8_t *g,
                                      const int32_t *sel, int32_t n_sel,
                                      int32_t c_begin, int32_t c_end, int32_t *grad_w)
{
    if (n_pos <= 0 || n_pos > TB_GRAD_MAX_POSITIONS || in_c <= 0 || out_c <= 0 ||
        input_offset < -128 || input_offset > 128 || c_begin < 0 || c_begin >= c_end ||
        c_end > out_c || !tb_channels_ok(sel, n_sel, in_c))
        return TB_ERR_ARG;
    for (int32_t c = c_begin; c < c_end; c++) {
        for (int32_t j = 0; j < n_sel; j++) {
            int32_t acc = 0;
            for (int32_t p = 0; p < n_pos; p++)
                acc += ((int32_t)x[p * in_c + sel[j]] + input_offset) * g[p * out_c + c];
            grad_w[(c - c_begin) * n_sel + j] = acc;
        }
    }
    return TB_OK;
}

int32_t tb_pointwise_input_grad_s8_scratch_bytes(int32_t out_c)
{
    (void)out_c;
    return 0;
}

tb_status tb_pointwise_input_grad_s8(int32_t n_pos, int32_t in_c, int32_t out_c,
                                     const int8_t *h, const int8_t *w, int32_t *acc,
                                     void *scratch)
{
    (void)scratch;
    if (n_pos <= 0 || in_c <= 0 || out_c <= 0 || out_c > TB_GRAD_MAX_FAN_OUT) return TB_ERR_ARG;
    for (int32_t p = 0; p < n_pos; p++) {
        int32_t *ap = acc + p * in_c;
        for (int32_t i = 0; i < in_c; i++) ap[i] = 0;
        for (int32_t c = 0; c < out_c; c++) {
            const int32_t hv = h[p * out_c + c];
            const int8_t *wc = w + c * in_c;
            for (int32_t i = 0; i < in_c; i++) ap[i] += wc[i] * hv;
        }
    }
    return TB_OK;
}
