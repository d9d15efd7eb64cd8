/* Pointwise (1x1, stride 1, no padding) convolution, int8. */
#include "tb_kernels.h"
#include "tb_requant.h"
#include "tb_checks.h"
#include "tb_dsp_gemm.h"

/* Same size on every build (the host plans the device's memory with it): what the DSP path uses. */
int32_t tb_pointwise_conv_s8_scratch_bytes(int32_t in_c, int32_t out_c)
{
    if (in_c <= 0 || out_c <= 0) return 0;
    if (tb_gemm_use_quad(in_c)) return tb_gemm_quad_scratch_bytes(in_c, out_c);
    if (in_c <= TB_GEMM_TRIO_MAX_K) return tb_gemm_scratch_bytes(in_c, out_c);
    return 0; /* longer rows that are not a multiple of 8: the plain path */
}

/* The plain-C path: the readable reference. */
static void pointwise_plain(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                            const int8_t *w, const int32_t *bias, const int32_t *mult,
                            const int32_t *shift, int8_t *y, int32_t c_begin, int32_t c_end)
{
    const int32_t n_pos = in.h * in.w;
    for (int32_t pos = 0; pos < n_pos; pos++) {
        const int8_t *xp = x + pos * in.c;
        for (int32_t c = c_begin; c < c_end; c++) {
            const int8_t *wc = w + c * in.c;
            int32_t acc = bias ? bias[c] : 0;
            for (int32_t i = 0; i < in.c; i++)
                acc += (int32_t)wc[i] * ((int32_t)xp[i] + p->input_offset);
            acc = tb_requantize_as(p->rounding, acc, mult[c], shift[c]) + p->output_offset;
            y[pos * out.c + c] = (int8_t)tb_clamp_i32(acc, p->act_min, p->act_max);
        }
    }
}

#if TB_DSP
/* in_c up to 48: three positions x two channels, both operands expanded (tb_dsp_gemm_trio_run);
 * in_c = 8: one position with its inputs in registers (tb_dsp_gemm_solo8) */
static void pointwise_trios(const tb_conv_params *p, int32_t n_pos, int32_t in_c, const int8_t *x,
                            int32_t out_c, const int8_t *w, const int32_t *bias,
                            const int32_t *mult, const int32_t *shift, int8_t *y, int32_t *xs)
{
    int32_t *ws = xs + 3 * tb_gemm_k4(in_c) / 2;
    const tb_gemm_routines *run = tb_gemm_routines_for(p->rounding);
    for (int32_t c0 = 0; c0 < out_c; c0 += TB_GEMM_BLOCK) {
        const int32_t c1 = out_c - c0 < TB_GEMM_BLOCK ? out_c : c0 + TB_GEMM_BLOCK;
        if (in_c == 8 && (c1 - c0) % 2 == 0) { /* the input row fits in registers */
            tb_gemm_solo_ctx sc;
            tb_dsp_solo8_stream(w, c0, c1, bias, mult, shift, p->output_offset, ws);
            sc.x = x;
            sc.xend = x + 8 * n_pos;
            sc.ws = ws;
            sc.y = y + c0;
            sc.off2 = (int32_t)(((uint32_t)p->input_offset & 0xFFFFu) |
                                ((uint32_t)p->input_offset << 16));
            sc.yskip = out_c - (c1 - c0);
            run->solo8(&sc);
            continue;
        }
        tb_dsp_gemm_weights(w, in_c, c0, c1, bias, mult, shift, p->output_offset, ws);
        int32_t pos = 0;
        if (in_c % 8 == 0 && (c1 - c0) % 2 == 0) {  /* whole trios of positions: all assembly */
            const int32_t off2 =
                (int32_t)(((uint32_t)p->input_offset & 0xFFFFu) | ((uint32_t)p->input_offset << 16));
            tb_gemm_ctx ctx;
            ctx.xs = xs;
            ctx.entry = tb_gemm_trio_entry(in_c);
            ctx.ws = ws;
            ctx.oc = out_c;
            ctx.oc2 = 2 * out_c;
            for (; pos + 3 <= n_pos; pos += 3) {
                tb_dsp_trio_expand(x + pos * in_c, in_c, off2, xs);
                ctx.y = y + pos * out_c + c0;
                run->trio(&ctx);
            }
        }
        for (; pos < n_pos; pos += 3) {
            int8_t *yq[3];
            for (int32_t q = 0; q < 3; q++) {
                if (pos + q < n_pos) {
                    tb_dsp_gemm_expand(x + (pos + q) * in_c, in_c, p->input_offset, q, xs);
                    yq[q] = y + (pos + q) * out_c + c0;
                } else {
                    tb_dsp_gemm_zero(in_c, q, xs);
                    yq[q] = 0;
                }
            }
            tb_dsp_gemm_run(xs, in_c, ws, c1 - c0, yq[0], yq[1], yq[2], run->trio);
        }
    }
}

/* in_c > 48, a multiple of 8: six (then four) positions x one channel, weights unpacked on the fly
 * (tb_dsp_gemm_hexa, tb_dsp_gemm_quad) */
static void pointwise_quads(const tb_conv_params *p, int32_t n_pos, int32_t in_c, const int8_t *x,
                            int32_t out_c, const int8_t *w, const int32_t *bias,
                            const int32_t *mult, const int32_t *shift, int8_t *y, int32_t *xs)
{
    int32_t *rq = xs + 3 * in_c;
    int8_t spill[4 * TB_GEMM_QUAD_BLOCK];
    const int32_t off2 = (int32_t)(((uint32_t)(2 * p->input_offset) & 0xFFFFu) |
                                   ((uint32_t)(2 * p->input_offset) << 16));
    const tb_gemm_routines *run = tb_gemm_routines_for(p->rounding);
    tb_gemm_quad_ctx ctx;
    ctx.xs = xs;
    ctx.xend = xs + 2 * in_c;
    ctx.rq = rq;
    for (int32_t c0 = 0; c0 < out_c; c0 += TB_GEMM_QUAD_BLOCK) {
        const int32_t c1 = out_c - c0 < TB_GEMM_QUAD_BLOCK ? out_c : c0 + TB_GEMM_QUAD_BLOCK;
        tb_dsp_quad_constants(c0, c1, bias, mult, shift, p->output_offset, rq);
        ctx.w = w + c0 * in_c;
        ctx.wend = w + c1 * in_c;
        int32_t pos = 0;
        ctx.oc = out_c;
        ctx.xend = xs + 3 * in_c;
        for (; pos + 6 <= n_pos; pos += 6) {
            tb_dsp_hexa_expand6(x + pos * in_c, in_c, off2, xs);
            ctx.y = y + pos * out_c + c0;
            (in_c % 16 == 0 ? run->hexa4 : run->hexa)(&ctx);
        }
        ctx.xend = xs + 2 * in_c;
        for (; pos + 4 <= n_pos; pos += 4) {
            tb_dsp_quad_expand4(x + pos * in_c, in_c, off2, xs);
            ctx.y = y + pos * out_c + c0;
            run->quad(&ctx);
        }
        if (pos < n_pos) {  /* 1-3 positions left: the others write to spill */
            for (int32_t q = 0; q < 4; q++) {
                if (pos + q < n_pos)
                    tb_dsp_quad_expand(x + (pos + q) * in_c, in_c, p->input_offset, q, xs);
                else
                    tb_dsp_quad_zero(in_c, q, xs);
            }
            ctx.y = spill;
            ctx.oc = TB_GEMM_QUAD_BLOCK;
            run->quad(&ctx);
            for (int32_t q = 0; q < n_pos - pos; q++)
                for (int32_t c = c0; c < c1; c++)
                    y[(pos + q) * out_c + c] = spill[q * TB_GEMM_QUAD_BLOCK + (c - c0)];
        }
    }
}

static void pointwise_dsp(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                          const int8_t *w, const int32_t *bias, const int32_t *mult,
                          const int32_t *shift, int8_t *y, void *scratch)
{
    int32_t *xs = (int32_t *)(((uintptr_t)scratch + 15u) & ~(uintptr_t)15u);
    const int32_t n_pos = in.h * in.w;
    if (tb_gemm_use_quad(in.c))
        pointwise_quads(p, n_pos, in.c, x, out.c, w, bias, mult, shift, y, xs);
    else
        pointwise_trios(p, n_pos, in.c, x, out.c, w, bias, mult, shift, y, xs);
    if (p->act_min != -128 || p->act_max != 127)
        tb_dsp_clamp_s8(y, n_pos * out.c, p->act_min, p->act_max);
}

/* Some channels outside the fast requantization's range: the DSP path with stand-ins for them,
 * then those channels by the plain path (tb_dsp.h). 0: not possible here. */
static int pointwise_dsp_stand_ins(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                   tb_shape out, const int8_t *w, const int32_t *bias,
                                   const int32_t *mult, const int32_t *shift, int8_t *y,
                                   void *scratch)
{
    tb_dsp_stand_ins s;
    if (!tb_dsp_fill_stand_ins(bias, shift, out.c, in.c, &s)) return 0;
    pointwise_dsp(p, in, x, out, w, bias ? s.bias : NULL, mult, s.shift, y, scratch);
    for (int32_t c = 0; c < out.c; c++)
        if (!tb_dsp_channel_ok(bias, shift, c, in.c) &&
            !tb_dsp_constant_channel(p, w + c * in.c, in.c, 1, bias ? bias[c] : 0, mult[c], shift[c],
                                     y + c, in.h * in.w, out.c))
            pointwise_plain(p, in, x, out, w, bias, mult, shift, y, c, c + 1);
    return 1;
}
#endif

tb_status tb_pointwise_conv_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                               tb_shape out, const int8_t *w, const int32_t *bias,
                               const int32_t *mult, const int32_t *shift,
                               int8_t *y, void *scratch)
{
    if (p->kernel_h != 1 || p->kernel_w != 1 || p->stride_h != 1 || p->stride_w != 1 ||
        p->pad_top != 0 || p->pad_left != 0 || in.h != out.h || in.w != out.w ||
        in.c <= 0 || out.c <= 0 || in.h <= 0 || in.w <= 0 || !tb_rounding_ok(p->rounding))
        return TB_ERR_ARG;
#if TB_DSP
    if (scratch && (tb_gemm_use_quad(in.c) || in.c <= TB_GEMM_TRIO_MAX_K)) {
        if (tb_dsp_requant_ok(bias, shift, out.c, in.c)) {
            pointwise_dsp(p, in, x, out, w, bias, mult, shift, y, scratch);
            return TB_OK;
        }
        if (pointwise_dsp_stand_ins(p, in, x, out, w, bias, mult, shift, y, scratch)) return TB_OK;
    }
#else
    (void)scratch;
#endif
    pointwise_plain(p, in, x, out, w, bias, mult, shift, y, 0, out.c);
    return TB_OK;
}
