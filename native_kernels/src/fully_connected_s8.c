/* Fully connected, int8, per-tensor or per-channel requantization (TFLite FULLY_CONNECTED). */
#include "tb_kernels.h"
#include "tb_requant.h"

tb_status tb_fully_connected_s8(int32_t in_features, int32_t out_features, const int8_t *x,
                                int32_t input_offset, const int8_t *w, const int32_t *bias,
                                const int32_t *mult, const int32_t *shift, int32_t n_mult,
                                int32_t output_offset, int32_t act_min, int32_t act_max,
                                int8_t *y)
{
    if (in_features <= 0 || out_features <= 0 || (n_mult != 1 && n_mult != out_features) ||
        act_min > act_max || act_min < -128 || act_max > 127)
        return TB_ERR_ARG;
    for (int32_t o = 0; o < out_features; o++) {
        const int8_t *wo = w + o * in_features;
        int32_t acc = bias ? bias[o] : 0;
        for (int32_t i = 0; i < in_features; i++)
            acc += (int32_t)wo[i] * ((int32_t)x[i] + input_offset);
        const int32_t q = n_mult == 1 ? 0 : o;
        acc = tb_requantize(acc, mult[q], shift[q]) + output_offset;
        y[o] = (int8_t)tb_clamp_i32(acc, act_min, act_max);
    }
    return TB_OK;
}
