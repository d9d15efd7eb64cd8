/* Pointwise (1x1, stride 1, no padding) convolution, int8. */
#include "tb_kernels.h"
#include "tb_requant.h"
#include "tb_checks.h"

int32_t tb_pointwise_conv_s8_scratch_bytes(int32_t in_c)
{
    (void)in_c;
    return 0;
}

tb_status tb_pointwise_conv_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                               tb_shape out, const int8_t *w, const int32_t *bias,
                               const int32_t *mult, const int32_t *shift,
                               int8_t *y, void *scratch)
{
    (void)scratch;
    if (p->kernel_h != 1 || p->kernel_w != 1 || p->stride_h != 1 || p->stride_w != 1 ||
        p->pad_top != 0 || p->pad_left != 0 || in.h != out.h || in.w != out.w ||
        in.c <= 0 || out.c <= 0 || in.h <= 0 || in.w <= 0)
        return TB_ERR_ARG;
    const int32_t n_pos = in.h * in.w;
    for (int32_t pos = 0; pos < n_pos; pos++) {
        const int8_t *xp = x + pos * in.c;
        for (int32_t c = 0; c < out.c; c++) {
            const int8_t *wc = w + c * in.c;
            int32_t acc = bias ? bias[c] : 0;
            for (int32_t i = 0; i < in.c; i++)
                acc += (int32_t)wc[i] * ((int32_t)xp[i] + p->input_offset);
            acc = tb_requantize(acc, mult[c], shift[c]) + p->output_offset;
            y[pos * out.c + c] = (int8_t)tb_clamp_i32(acc, p->act_min, p->act_max);
        }
    }
    return TB_OK;
}
