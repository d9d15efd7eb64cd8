/* General k x k convolution, int8 (any stride, zero padding), including the 3-channel first layer. */
#include "tb_kernels.h"
#include "tb_requant.h"
#include "tb_checks.h"

int32_t tb_conv2d_s8_scratch_bytes(const tb_conv_params *p, tb_shape in)
{
    (void)p;
    (void)in;
    return 0;
}

tb_status tb_conv2d_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                       tb_shape out, const int8_t *w, const int32_t *bias,
                       const int32_t *mult, const int32_t *shift,
                       int8_t *y, void *scratch)
{
    (void)scratch;
    if (!tb_conv_geometry_ok(p, in, out)) return TB_ERR_ARG;
    for (int32_t oy = 0; oy < out.h; oy++) {
        for (int32_t ox = 0; ox < out.w; ox++) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            for (int32_t c = 0; c < out.c; c++) {
                int32_t acc = bias ? bias[c] : 0;
                for (int32_t ky = 0; ky < p->kernel_h; ky++) {
                    const int32_t iy = iy0 + ky;
                    if (iy < 0 || iy >= in.h) continue;
                    for (int32_t kx = 0; kx < p->kernel_w; kx++) {
                        const int32_t ix = ix0 + kx;
                        if (ix < 0 || ix >= in.w) continue;
                        const int8_t *xp = x + (iy * in.w + ix) * in.c;
                        const int8_t *wp = w + ((c * p->kernel_h + ky) * p->kernel_w + kx) * in.c;
                        for (int32_t i = 0; i < in.c; i++)
                            acc += (int32_t)wp[i] * ((int32_t)xp[i] + p->input_offset);
                    }
                }
                acc = tb_requantize(acc, mult[c], shift[c]) + p->output_offset;
                y[(oy * out.w + ox) * out.c + c] = (int8_t)tb_clamp_i32(acc, p->act_min, p->act_max);
            }
        }
    }
    return TB_OK;
}
