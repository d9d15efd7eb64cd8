/* General k x k convolution, int8 (any stride, zero padding), including the 3-channel first layer. */
#include "tb_kernels.h"
#include "tb_requant.h"
#include "tb_checks.h"
#include "tb_dsp_gemm.h"

#include <string.h>

/* The DSP path gathers the k x k x in_c window of a few positions (im2col, one row of
 * K = kh kw in_c bytes each, padding as -input_offset so that it expands to 0) and runs the matrix
 * core of pointwise on those rows: K <= 48 (the first layer: 27) three positions x two channels,
 * longer rows (K a multiple of 8) four positions x one channel. */
#define TB_CONV_ROWS 4 /* gathered positions at a time */

static int32_t conv_k(const tb_conv_params *p, tb_shape in)
{
    return p->kernel_h * p->kernel_w * in.c;
}

/* Same size on every build (the host plans the device's memory with it): what the DSP path uses. */
int32_t tb_conv2d_s8_scratch_bytes(const tb_conv_params *p, tb_shape in, int32_t out_c)
{
    if (p->kernel_h <= 0 || p->kernel_w <= 0 || in.c <= 0 || out_c <= 0) return 0;
    const int32_t k = conv_k(p, in);
    if (tb_gemm_use_quad(k)) return tb_gemm_quad_scratch_bytes(k, out_c) + TB_CONV_ROWS * tb_gemm_k4(k);
    if (k <= TB_GEMM_TRIO_MAX_K) return tb_gemm_scratch_bytes(k, out_c) + TB_CONV_ROWS * tb_gemm_k4(k);
    return 0; /* longer rows that are not a multiple of 8: the plain path */
}

/* The plain-C path: the readable reference. */
static void conv2d_plain(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                         const int8_t *w, const int32_t *bias, const int32_t *mult,
                         const int32_t *shift, int8_t *y, int32_t c_begin, int32_t c_end)
{
    for (int32_t oy = 0; oy < out.h; oy++) {
        for (int32_t ox = 0; ox < out.w; ox++) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            for (int32_t c = c_begin; c < c_end; c++) {
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
                acc = tb_requantize_as(p->rounding, acc, mult[c], shift[c]) + p->output_offset;
                y[(oy * out.w + ox) * out.c + c] = (int8_t)tb_clamp_i32(acc, p->act_min, p->act_max);
            }
        }
    }
}

#if TB_DSP
/* the window of output position pos as one row of K bytes (OHWI order: ky, kx, channel) */
static void im2col(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                   int32_t pos, int8_t *row)
{
    const int32_t oy = pos / out.w, ox = pos % out.w;
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    const int8_t pad = (int8_t)(-p->input_offset);
    const int32_t run = p->kernel_w * in.c; /* one kernel row: contiguous when all inside */
    for (int32_t ky = 0; ky < p->kernel_h; ky++, row += run) {
        const int32_t iy = iy0 + ky;
        if (iy < 0 || iy >= in.h) {
            for (int32_t i = 0; i < run; i++) row[i] = pad;
        } else if (ix0 >= 0 && ix0 + p->kernel_w <= in.w) {
            const int8_t *src = x + (iy * in.w + ix0) * in.c;
            int32_t i = 0;
            for (; i + 4 <= run; i += 4) {
                const uint32_t v = tb_read32(src + i);
                memcpy(row + i, &v, 4);
            }
            for (; i < run; i++) row[i] = src[i];
        } else {
            for (int32_t kx = 0; kx < p->kernel_w; kx++) {
                const int32_t ix = ix0 + kx;
                const int8_t *src = x + (iy * in.w + ix) * in.c;
                const int inside = ix >= 0 && ix < in.w;
                for (int32_t i = 0; i < in.c; i++) row[kx * in.c + i] = inside ? src[i] : pad;
            }
        }
    }
}

static void conv2d_dsp(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                       const int8_t *w, const int32_t *bias, const int32_t *mult,
                       const int32_t *shift, int8_t *y, int32_t *xs)
{
    const int32_t k = conv_k(p, in), k4 = tb_gemm_k4(k);
    const int32_t n_pos = out.h * out.w, oc = out.c;
    const tb_gemm_routines *run = tb_gemm_routines_for(p->rounding);
    if (tb_gemm_use_quad(k)) {
        int32_t *rq = xs + 3 * k;
        int8_t *rows = (int8_t *)(rq + tb_gemm_quad_constant_words(oc));
        int8_t spill[4 * TB_GEMM_QUAD_BLOCK];
        const int32_t off2 = (int32_t)(((uint32_t)(2 * p->input_offset) & 0xFFFFu) |
                                       ((uint32_t)(2 * p->input_offset) << 16));
        tb_gemm_quad_ctx ctx;
        ctx.xs = xs;
        ctx.xend = xs + 2 * k;
        ctx.rq = rq;
        for (int32_t c0 = 0; c0 < oc; c0 += TB_GEMM_QUAD_BLOCK) {
            const int32_t c1 = oc - c0 < TB_GEMM_QUAD_BLOCK ? oc : c0 + TB_GEMM_QUAD_BLOCK;
            tb_dsp_quad_constants(c0, c1, bias, mult, shift, p->output_offset, rq);
            ctx.w = w + c0 * k;
            ctx.wend = w + c1 * k;
            for (int32_t pos = 0; pos < n_pos; pos += 4) {
                const int32_t n = n_pos - pos < 4 ? n_pos - pos : 4;
                for (int32_t q = 0; q < 4; q++)
                    if (q < n)
                        im2col(p, in, x, out, pos + q, rows + q * k);
                    else
                        for (int32_t i = 0; i < k; i++) rows[q * k + i] = (int8_t)(-p->input_offset);
                tb_dsp_quad_expand4(rows, k, off2, xs);
                ctx.y = n == 4 ? y + pos * oc + c0 : spill;
                ctx.oc = n == 4 ? oc : TB_GEMM_QUAD_BLOCK;
                run->quad(&ctx);
                if (n < 4)
                    for (int32_t q = 0; q < n; q++)
                        for (int32_t c = c0; c < c1; c++)
                            y[(pos + q) * oc + c] = spill[q * TB_GEMM_QUAD_BLOCK + (c - c0)];
            }
        }
        return;
    }
    int32_t *ws = xs + 3 * k4 / 2;
    int8_t *rows = (int8_t *)(ws + tb_gemm_stream_words(k4, oc));
    for (int32_t c0 = 0; c0 < oc; c0 += TB_GEMM_BLOCK) {
        const int32_t c1 = oc - c0 < TB_GEMM_BLOCK ? oc : c0 + TB_GEMM_BLOCK;
        tb_dsp_gemm_weights(w, k, c0, c1, bias, mult, shift, p->output_offset, ws);
        for (int32_t pos = 0; pos < n_pos; pos += 3) {
            int8_t *yq[3];
            for (int32_t q = 0; q < 3; q++) {
                if (pos + q < n_pos) {
                    im2col(p, in, x, out, pos + q, rows);
                    tb_dsp_gemm_expand(rows, k, p->input_offset, q, xs);
                    yq[q] = y + (pos + q) * oc + c0;
                } else {
                    tb_dsp_gemm_zero(k, q, xs);
                    yq[q] = 0;
                }
            }
            tb_dsp_gemm_run(xs, k, ws, c1 - c0, yq[0], yq[1], yq[2], run->trio);
        }
    }
}

static void conv2d_dsp_clamped(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                               const int8_t *w, const int32_t *bias, const int32_t *mult,
                               const int32_t *shift, int8_t *y, void *scratch)
{
    conv2d_dsp(p, in, x, out, w, bias, mult, shift, y,
               (int32_t *)(((uintptr_t)scratch + 15u) & ~(uintptr_t)15u));
    if (p->act_min != -128 || p->act_max != 127)
        tb_dsp_clamp_s8(y, out.h * out.w * out.c, p->act_min, p->act_max);
}

/* Some channels outside the fast requantization's range: the DSP path with stand-ins for them,
 * then those channels by the plain path (tb_dsp.h). 0: not possible here. */
static int conv2d_dsp_stand_ins(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                                const int8_t *w, const int32_t *bias, const int32_t *mult,
                                const int32_t *shift, int8_t *y, void *scratch)
{
    tb_dsp_stand_ins s;
    if (!tb_dsp_fill_stand_ins(bias, shift, out.c, conv_k(p, in), &s)) return 0;
    conv2d_dsp_clamped(p, in, x, out, w, bias ? s.bias : NULL, mult, s.shift, y, scratch);
    const int32_t k = conv_k(p, in);
    for (int32_t c = 0; c < out.c; c++)
        if (!tb_dsp_channel_ok(bias, shift, c, k) &&
            !tb_dsp_constant_channel(p, w + c * k, k, 1, bias ? bias[c] : 0, mult[c], shift[c], y + c,
                                     out.h * out.w, out.c))
            conv2d_plain(p, in, x, out, w, bias, mult, shift, y, c, c + 1);
    return 1;
}
#endif

tb_status tb_conv2d_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                       tb_shape out, const int8_t *w, const int32_t *bias,
                       const int32_t *mult, const int32_t *shift,
                       int8_t *y, void *scratch)
{
    if (!tb_conv_geometry_ok(p, in, out) || !tb_rounding_ok(p->rounding)) return TB_ERR_ARG;
#if TB_DSP
    if (scratch && (tb_gemm_use_quad(conv_k(p, in)) || conv_k(p, in) <= TB_GEMM_TRIO_MAX_K)) {
        if (tb_dsp_requant_ok(bias, shift, out.c, conv_k(p, in))) {
            conv2d_dsp_clamped(p, in, x, out, w, bias, mult, shift, y, scratch);
            return TB_OK;
        }
        if (conv2d_dsp_stand_ins(p, in, x, out, w, bias, mult, shift, y, scratch)) return TB_OK;
    }
#else
    (void)scratch;
#endif
    conv2d_plain(p, in, x, out, w, bias, mult, shift, y, 0, out.c);
    return TB_OK;
}
