/* Depthwise k x k convolution, int8, depth multiplier 1. */
#include "tb_kernels.h"
#include "tb_requant.h"
#include "tb_checks.h"

tb_status tb_depthwise_conv2d_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                 tb_shape out, const int8_t *w, const int32_t *bias,
                                 const int32_t *mult, const int32_t *shift, int8_t *y)
{
    if (!tb_conv_geometry_ok(p, in, out) || in.c != out.c) return TB_ERR_ARG;
    const int32_t ch = in.c;
    for (int32_t oy = 0; oy < out.h; oy++) {
        for (int32_t ox = 0; ox < out.w; ox++) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            for (int32_t c = 0; c < ch; c++) {
                int32_t acc = bias ? bias[c] : 0;
                for (int32_t ky = 0; ky < p->kernel_h; ky++) {
                    const int32_t iy = iy0 + ky;
                    if (iy < 0 || iy >= in.h) continue;
                    for (int32_t kx = 0; kx < p->kernel_w; kx++) {
                        const int32_t ix = ix0 + kx;
                        if (ix < 0 || ix >= in.w) continue;
                        acc += (int32_t)w[(ky * p->kernel_w + kx) * ch + c] *
                               ((int32_t)x[(iy * in.w + ix) * ch + c] + p->input_offset);
                    }
                }
                acc = tb_requantize(acc, mult[c], shift[c]) + p->output_offset;
                y[(oy * out.w + ox) * ch + c] = (int8_t)tb_clamp_i32(acc, p->act_min, p->act_max);
            }
        }
    }
    return TB_OK;
}
