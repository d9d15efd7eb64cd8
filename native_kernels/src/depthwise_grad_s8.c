/* Depthwise k x k convolution backward (depth multiplier 1): every channel on its own. */
#include "tb_train.h"
#include "tb_grad.h"
#include "tb_checks.h"

tb_status tb_depthwise_weight_grad_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                      tb_shape out, const int8_t *g,
                                      const int32_t *sel, int32_t n_sel, int32_t *grad_w)
{
    if (!tb_conv_geometry_ok(p, in, out) || in.c != out.c || out.h * out.w > TB_GRAD_MAX_POSITIONS ||
        p->input_offset < -128 || p->input_offset > 128 || !tb_channels_ok(sel, n_sel, in.c))
        return TB_ERR_ARG;
    const int32_t ch = in.c;
    int32_t *gw = grad_w;
    for (int32_t ky = 0; ky < p->kernel_h; ky++) {
        for (int32_t kx = 0; kx < p->kernel_w; kx++) {
            for (int32_t j = 0; j < n_sel; j++) {
                const int32_t c = sel[j];
                int32_t acc = 0;
                for (int32_t oy = 0; oy < out.h; oy++) {
                    const int32_t iy = oy * p->stride_h - p->pad_top + ky;
                    if (iy < 0 || iy >= in.h) continue;  /* padding: zero in real value */
                    for (int32_t ox = 0; ox < out.w; ox++) {
                        const int32_t ix = ox * p->stride_w - p->pad_left + kx;
                        if (ix < 0 || ix >= in.w) continue;
                        acc += ((int32_t)x[(iy * in.w + ix) * ch + c] + p->input_offset) *
                               g[(oy * out.w + ox) * ch + c];
                    }
                }
                *gw++ = acc;
            }
        }
    }
    return TB_OK;
}

tb_status tb_depthwise_input_grad_s8(const tb_conv_params *p, tb_shape in, tb_shape out,
                                     const int8_t *h, const int8_t *w, int32_t *acc)
{
    if (!tb_conv_geometry_ok(p, in, out) || in.c != out.c ||
        p->kernel_h * p->kernel_w > TB_GRAD_MAX_FAN_OUT)
        return TB_ERR_ARG;
    const int32_t ch = in.c;
    for (int32_t i = 0; i < in.h * in.w * ch; i++) acc[i] = 0;
    /* scatter each output gradient back through the window that produced the output */
    for (int32_t oy = 0; oy < out.h; oy++) {
        for (int32_t ox = 0; ox < out.w; ox++) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            const int8_t *hp = h + (oy * out.w + ox) * ch;
            for (int32_t ky = 0; ky < p->kernel_h; ky++) {
                const int32_t iy = iy0 + ky;
                if (iy < 0 || iy >= in.h) continue;
                for (int32_t kx = 0; kx < p->kernel_w; kx++) {
                    const int32_t ix = ix0 + kx;
                    if (ix < 0 || ix >= in.w) continue;
                    int32_t *ap = acc + (iy * in.w + ix) * ch;
                    const int8_t *wp = w + (ky * p->kernel_w + kx) * ch;
                    for (int32_t c = 0; c < ch; c++) ap[c] += wp[c] * hp[c];
                }
            }
        }
    }
    return TB_OK;
}
