/* General k x k convolution backward: weight gradient for the trained input channels (a
 * correlation of input and output gradient), input gradient as the transposed convolution. */
#include "tb_train.h"
#include "tb_grad.h"
#include "tb_checks.h"

tb_status tb_conv2d_weight_grad_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                   tb_shape out, const int8_t *g,
                                   const int32_t *sel, int32_t n_sel,
                                   int32_t c_begin, int32_t c_end, int32_t *grad_w)
{
    if (!tb_conv_geometry_ok(p, in, out) || out.h * out.w > TB_GRAD_MAX_POSITIONS ||
        p->input_offset < -128 || p->input_offset > 128 || c_begin < 0 || c_begin >= c_end ||
        c_end > out.c || !tb_channels_ok(sel, n_sel, in.c))
        return TB_ERR_ARG;
    int32_t *gw = grad_w;
    for (int32_t c = c_begin; c < c_end; c++) {
        for (int32_t ky = 0; ky < p->kernel_h; ky++) {
            for (int32_t kx = 0; kx < p->kernel_w; kx++) {
                for (int32_t j = 0; j < n_sel; j++) {
                    int32_t acc = 0;
                    for (int32_t oy = 0; oy < out.h; oy++) {
                        const int32_t iy = oy * p->stride_h - p->pad_top + ky;
                        if (iy < 0 || iy >= in.h) continue;  /* padding: zero in real value */
                        for (int32_t ox = 0; ox < out.w; ox++) {
                            const int32_t ix = ox * p->stride_w - p->pad_left + kx;
                            if (ix < 0 || ix >= in.w) continue;
                            acc += ((int32_t)x[(iy * in.w + ix) * in.c + sel[j]] + p->input_offset) *
                                   g[(oy * out.w + ox) * out.c + c];
                        }
                    }
                    *gw++ = acc;
                }
            }
        }
    }
    return TB_OK;
}

tb_status tb_conv2d_input_grad_s8(const tb_conv_params *p, tb_shape in, tb_shape out,
                                  const int8_t *h, const int8_t *w, int32_t *acc)
{
    if (!tb_conv_geometry_ok(p, in, out) || p->kernel_h * p->kernel_w * out.c > TB_GRAD_MAX_FAN_OUT)
        return TB_ERR_ARG;
    for (int32_t i = 0; i < in.h * in.w * in.c; i++) acc[i] = 0;
    /* scatter each output gradient back through the window that produced the output */
    for (int32_t oy = 0; oy < out.h; oy++) {
        for (int32_t ox = 0; ox < out.w; ox++) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            for (int32_t ky = 0; ky < p->kernel_h; ky++) {
                const int32_t iy = iy0 + ky;
                if (iy < 0 || iy >= in.h) continue;
                for (int32_t kx = 0; kx < p->kernel_w; kx++) {
                    const int32_t ix = ix0 + kx;
                    if (ix < 0 || ix >= in.w) continue;
                    int32_t *ap = acc + (iy * in.w + ix) * in.c;
                    for (int32_t c = 0; c < out.c; c++) {
                        const int32_t hv = h[(oy * out.w + ox) * out.c + c];
                        const int8_t *wp = w + ((c * p->kernel_h + ky) * p->kernel_w + kx) * in.c;
                        for (int32_t i = 0; i < in.c; i++) ap[i] += wp[i] * hv;
                    }
                }
            }
        }
    }
    return TB_OK;
}
