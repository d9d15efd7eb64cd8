/* Residual add with requantization, int8 (TFLite ADD). */
#include "tb_kernels.h"
#include "tb_requant.h"

tb_status tb_add_s8(const tb_add_params *p, const int8_t *a, const int8_t *b, int32_t n, int8_t *y)
{
    if (n <= 0 || p->left_shift < 0 || p->left_shift > 20 || p->act_min > p->act_max ||
        p->act_min < -128 || p->act_max > 127)
        return TB_ERR_ARG;
    for (int32_t i = 0; i < n; i++) {
        const int32_t sa = (p->input1_offset + a[i]) * (1 << p->left_shift);
        const int32_t sb = (p->input2_offset + b[i]) * (1 << p->left_shift);
        const int32_t ra = tb_requantize(sa, p->input1_multiplier, p->input1_shift);
        const int32_t rb = tb_requantize(sb, p->input2_multiplier, p->input2_shift);
        const int32_t out = tb_requantize(ra + rb, p->output_multiplier, p->output_shift) +
                            p->output_offset;
        y[i] = (int8_t)tb_clamp_i32(out, p->act_min, p->act_max);
    }
    return TB_OK;
}
