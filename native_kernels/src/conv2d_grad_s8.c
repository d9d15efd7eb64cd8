/* General k x k convolution backward: weight gradient for the trained input channels (a
 * correlation of input and output gradient), input gradient as the transposed convolution. */
#include "tb_train.h"
#include "tb_grad.h"
#include "tb_checks.h"
#include "tb_dsp_grad.h"

#if TB_DSP
/* Both gradients are matrix products over the window columns t = (ky kw + kx) n + j (OHWI order;
 * n = the trained channels for the weight gradient, all for the input gradient), run by the trio
 * core (tb_dsp_grad.h) in column blocks of TB_ACC_NB:
 *   weight: gw[c][t] = sum_p g[p][c] X[p][t]   rows = output channels, reduction = positions
 *   input:  col[p][t] = sum_c W[c][t] h[p][c]  rows = positions, reduction = output channels,
 *           then acc[window of p at t] += col[p][t] (col2im, padding skipped) */

/* the window's columns t0..t0+tn of output position pos, trained channels sel (n of them), as
 * bytes; padding reads pad (which the expansion turns into 0) */
static void window_cols(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                        int32_t pos, const int32_t *sel, int32_t n, int32_t t0, int32_t tn,
                        int8_t pad, int8_t *row)
{
    const int32_t oy = pos / out.w, ox = pos - oy * out.w;
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    int32_t tap = t0 / n, j = t0 - tap * n;
    for (int32_t t = 0; t < tn;) {
        const int32_t ky = tap / p->kernel_w, kx = tap - ky * p->kernel_w;
        const int32_t iy = iy0 + ky, ix = ix0 + kx;
        const int32_t run = n - j < tn - t ? n - j : tn - t; /* columns of this tap */
        if (iy < 0 || iy >= in.h || ix < 0 || ix >= in.w) {
            for (int32_t i = 0; i < run; i++) row[t + i] = pad;
        } else {
            const int8_t *xp = x + (iy * in.w + ix) * in.c;
            for (int32_t i = 0; i < run; i++) row[t + i] = xp[sel[j + i]];
        }
        t += run;
        j = 0;
        tap++;
    }
}

static void weight_grad_dsp(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                            const int8_t *g, const int32_t *sel, int32_t n_sel, int32_t c_begin,
                            int32_t c_end, int32_t *grad_w)
{
    int32_t ws[TB_ACC_NB * TB_ACC_MAXQ];
    int32_t xs[3 * TB_ACC_MAXQ];
    int8_t rows[2][TB_ACC_NB];
    const int32_t n_pos = out.h * out.w, ncol = p->kernel_h * p->kernel_w * n_sel;
    const int32_t off = p->input_offset;
    const int32_t off2 = (int32_t)(((uint32_t)off & 0xFFFFu) | ((uint32_t)off << 16));
    for (int32_t p0 = 0; p0 < n_pos; p0 += 2 * TB_ACC_MAXQ) {
        const int32_t pn = n_pos - p0 < 2 * TB_ACC_MAXQ ? n_pos - p0 : 2 * TB_ACC_MAXQ;
        const int32_t nq = (pn + 1) / 2;
        for (int32_t t0 = 0; t0 < ncol; t0 += TB_ACC_NB) {
            const int32_t tn = ncol - t0 < TB_ACC_NB ? ncol - t0 : TB_ACC_NB;
            /* the stream: per position pair, both windows' columns, paired by PKHBT / PKHTB */
            for (int32_t q = 0; q < nq; q++) {
                const int32_t pa = p0 + 2 * q;
                window_cols(p, in, x, out, pa, sel, n_sel, t0, tn, (int8_t)-off, rows[0]);
                if (2 * q + 1 < pn)
                    window_cols(p, in, x, out, pa + 1, sel, n_sel, t0, tn, (int8_t)-off, rows[1]);
                else
                    for (int32_t t = 0; t < tn; t++) rows[1][t] = 0; /* its g is 0 */
                for (int32_t t = tn; t < ((tn + 3) & ~3); t++) rows[0][t] = rows[1][t] = 0;
                int32_t *s = ws + 2 * q;
                for (int32_t t = 0; t < tn; t += 4, s += 4 * nq) {
                    const uint32_t a = tb_read32(rows[0] + t), b = tb_read32(rows[1] + t);
                    const uint32_t lo = tb_pack_lo(a, b), hi = tb_pack_hi(a, b);
                    s[0] = __sxtab16(off2, lo);
                    s[1] = tb_sxtab16_ror8(off2, lo);
                    if (t + 2 < tn) {
                        s[2 * nq] = __sxtab16(off2, hi);
                        s[2 * nq + 1] = tb_sxtab16_ror8(off2, hi);
                    }
                }
            }
            for (int32_t c = c_begin; c < c_end; c += 3) {
                /* trio rows: g of channels c..c+2 at the position pairs */
                const int8_t *ga = g + p0 * out.c + c;
                for (int32_t q = 0; q < nq; q++, ga += 2 * out.c)
                    for (int32_t r = 0; r < 3; r++) {
                        const int32_t va = c + r < out.c ? ga[r] : 0;
                        const int32_t vb = c + r < out.c && 2 * q + 1 < pn ? ga[out.c + r] : 0;
                        xs[3 * q + r] = (int32_t)(((uint32_t)va & 0xFFFFu) | ((uint32_t)vb << 16));
                    }
                /* gw[c][t], t = (ky kw + kx) n_sel + j: the OHWI layout of the chunk */
                int32_t *y = grad_w + (c - c_begin) * ncol + t0;
                tb_acc_run(xs, ws, nq, tn, y, c + 1 < c_end ? y + ncol : 0,
                           c + 2 < c_end ? y + 2 * ncol : 0, p0 > 0);
            }
        }
    }
}

static void input_grad_dsp(const tb_conv_params *p, tb_shape in, tb_shape out, const int8_t *h,
                           const int8_t *w, int32_t *acc)
{
    int32_t ws[TB_ACC_NB * TB_ACC_MAXQ];
    int32_t xs[3 * TB_ACC_MAXQ];
    int32_t col[3][TB_ACC_NB];
    const int32_t n_pos = out.h * out.w, ncol = p->kernel_h * p->kernel_w * in.c, k = out.c;
    const int32_t nqm = tb_acc_nq(k);
    for (int32_t i = 0; i < in.h * in.w * in.c; i++) acc[i] = 0;
    for (int32_t t0 = 0; t0 < ncol; t0 += TB_ACC_NB) {
        const int32_t tn = ncol - t0 < TB_ACC_NB ? ncol - t0 : TB_ACC_NB;
        for (int32_t k0 = 0; k0 < k; k0 += 2 * nqm) {
            const int32_t kn = k - k0 < 2 * nqm ? k - k0 : 2 * nqm;
            const int32_t nq = tb_acc_nq(kn);
            tb_acc_stream_transposed(w, ncol, k0, kn, t0, tn, nq, ws);
            for (int32_t pos = 0; pos < n_pos; pos += 3) {
                const int32_t np = n_pos - pos < 3 ? n_pos - pos : 3;
                for (int32_t r = 0; r < np; r++)
                    tb_acc_expand_row(h + (pos + r) * k + k0, kn, 0, nq, r, xs);
                tb_acc_run(xs, ws, nq, tn, col[0], np > 1 ? col[1] : 0, np > 2 ? col[2] : 0, 0);
                /* col2im: each column back to its input position, padding skipped */
                for (int32_t r = 0; r < np; r++) {
                    const int32_t oy = (pos + r) / out.w, ox = pos + r - oy * out.w;
                    const int32_t iy0 = oy * p->stride_h - p->pad_top;
                    const int32_t ix0 = ox * p->stride_w - p->pad_left;
                    int32_t tap = t0 / in.c, i = t0 - tap * in.c;
                    for (int32_t t = 0; t < tn;) {
                        const int32_t ky = tap / p->kernel_w, kx = tap - ky * p->kernel_w;
                        const int32_t iy = iy0 + ky, ix = ix0 + kx;
                        const int32_t run = in.c - i < tn - t ? in.c - i : tn - t;
                        if (iy >= 0 && iy < in.h && ix >= 0 && ix < in.w) {
                            int32_t *ap = acc + (iy * in.w + ix) * in.c + i;
                            const int32_t *cp = col[r] + t;
                            for (int32_t u = 0; u < run; u++) ap[u] += cp[u];
                        }
                        t += run;
                        i = 0;
                        tap++;
                    }
                }
            }
        }
    }
}
#endif

tb_status tb_conv2d_weight_grad_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                   tb_shape out, const int8_t *g,
                                   const int32_t *sel, int32_t n_sel,
                                   int32_t c_begin, int32_t c_end, int32_t *grad_w)
{
    if (!tb_conv_geometry_ok(p, in, out) || out.h * out.w > TB_GRAD_MAX_POSITIONS ||
        p->input_offset < -128 || p->input_offset > 128 || c_begin < 0 || c_begin >= c_end ||
        c_end > out.c || !tb_channels_ok(sel, n_sel, in.c))
        return TB_ERR_ARG;
#if TB_DSP
    if (p->input_offset > -128) { /* padding is the byte -input_offset */
        weight_grad_dsp(p, in, x, out, g, sel, n_sel, c_begin, c_end, grad_w);
        return TB_OK;
    }
#endif
    /* the plain-C path: the readable reference */
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
#if TB_DSP
    input_grad_dsp(p, in, out, h, w, acc);
    return TB_OK;
#endif
    /* the plain-C path: the readable reference */
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
