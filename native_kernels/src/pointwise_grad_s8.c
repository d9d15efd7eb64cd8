/* Pointwise (1x1) and fully connected backward: weight gradient for the trained input channels,
 * input gradient as the transposed product. */
#include "tb_train.h"
#include "tb_grad.h"
#include "tb_dsp_grad.h"

#if TB_DSP
/* ---- weight gradient: gw[c][j] = sum_p g[p][c] (x[p][sel j] + offset), the trio core
 * (tb_dsp_grad.h) with rows = output channels, columns = selected input channels, reduction =
 * positions in pairs (p, p + 1), blocks of 2 TB_ACC_MAXQ positions. */

/* stream block: columns sel[0..jn), positions p0..p0+pn (a missing last partner reads as 0: its
 * g is 0) */
static void stream_positions(const int8_t *x, int32_t in_c, int32_t offset, const int32_t *sel,
                             int32_t jn, int32_t p0, int32_t pn, int32_t nq, int32_t *ws)
{
    const int32_t off2 = (int32_t)(((uint32_t)offset & 0xFFFFu) | ((uint32_t)offset << 16));
    const int32_t step = 2 * in_c;
    int32_t j = 0;
    for (; j < jn; j += 4) {
        int32_t *s = ws + j * nq; /* duo j / 2 */
        const int8_t *xa = x + p0 * in_c + sel[j];
        if (j + 4 <= jn && sel[j + 3] - sel[j] == 3) { /* four adjacent channels: one word */
            for (int32_t q = 0; q < nq; q++, xa += step, s += 2) {
                const uint32_t a = tb_read32(xa);
                const uint32_t b = 2 * q + 1 < pn ? tb_read32(xa + in_c) : 0;
                const uint32_t lo = tb_pack_lo(a, b), hi = tb_pack_hi(a, b);
                s[0] = __sxtab16(off2, lo);
                s[1] = tb_sxtab16_ror8(off2, lo);
                s[2 * nq] = __sxtab16(off2, hi);
                s[2 * nq + 1] = tb_sxtab16_ror8(off2, hi);
            }
            continue;
        }
        for (int32_t i = 0; i < 4 && j + i < jn + (jn & 1); i++) {
            int32_t *t = ws + ((j + i) / 2) * 2 * nq + ((j + i) & 1);
            if (j + i >= jn) { /* the empty half of the last duo */
                for (int32_t q = 0; q < nq; q++) t[2 * q] = 0;
                continue;
            }
            const int8_t *xc = x + p0 * in_c + sel[j + i];
            for (int32_t q = 0; q < nq; q++, xc += step) {
                const int32_t va = xc[0] + offset;
                const int32_t vb = 2 * q + 1 < pn ? xc[in_c] + offset : 0;
                t[2 * q] = (int32_t)(((uint32_t)va & 0xFFFFu) | ((uint32_t)vb << 16));
            }
        }
    }
}

/* trio rows: output channels c..c+2 (those past out_c read as 0), positions p0..p0+pn */
static void trio_positions(const int8_t *g, int32_t out_c, int32_t c, int32_t p0, int32_t pn,
                           int32_t nq, int32_t *xs)
{
    const int8_t *ga = g + p0 * out_c + c;
    const int32_t step = 2 * out_c;
    if (c + 4 <= out_c) {
        for (int32_t q = 0; q < nq; q++, ga += step, xs += 3) {
            const uint32_t a = tb_read32(ga);
            const uint32_t b = 2 * q + 1 < pn ? tb_read32(ga + out_c) : 0;
            const uint32_t lo = tb_pack_lo(a, b), hi = tb_pack_hi(a, b);
            xs[0] = __sxtb16(lo);
            xs[1] = tb_sxtb16_ror8(lo);
            xs[2] = __sxtb16(hi);
        }
        return;
    }
    for (int32_t q = 0; q < nq; q++, ga += step, xs += 3)
        for (int32_t r = 0; r < 3; r++) {
            const int32_t va = c + r < out_c ? ga[r] : 0;
            const int32_t vb = c + r < out_c && 2 * q + 1 < pn ? ga[out_c + r] : 0;
            xs[r] = (int32_t)(((uint32_t)va & 0xFFFFu) | ((uint32_t)vb << 16));
        }
}

static void weight_grad_dsp(int32_t n_pos, int32_t in_c, const int8_t *x, int32_t input_offset,
                            int32_t out_c, const int8_t *g, const int32_t *sel, int32_t n_sel,
                            int32_t c_begin, int32_t c_end, int32_t *grad_w)
{
    int32_t ws[TB_ACC_NB * TB_ACC_MAXQ];
    int32_t xs[3 * TB_ACC_MAXQ];
    for (int32_t p0 = 0; p0 < n_pos; p0 += 2 * TB_ACC_MAXQ) {
        const int32_t pn = n_pos - p0 < 2 * TB_ACC_MAXQ ? n_pos - p0 : 2 * TB_ACC_MAXQ;
        const int32_t nq = (pn + 1) / 2;
        for (int32_t j0 = 0; j0 < n_sel; j0 += TB_ACC_NB) {
            const int32_t jn = n_sel - j0 < TB_ACC_NB ? n_sel - j0 : TB_ACC_NB;
            stream_positions(x, in_c, input_offset, sel + j0, jn, p0, pn, nq, ws);
            for (int32_t c = c_begin; c < c_end; c += 3) {
                trio_positions(g, out_c, c, p0, pn, nq, xs);
                int32_t *y = grad_w + (c - c_begin) * n_sel + j0;
                tb_acc_run(xs, ws, nq, jn, y, c + 1 < c_end ? y + n_sel : 0,
                           c + 2 < c_end ? y + 2 * n_sel : 0, p0 > 0);
            }
        }
    }
}

/* ---- one position (fully connected): every weight is used once.
 * Input gradient: four columns n..n+3 at a time over all output channels, four at a time: rows
 * c, c + 2 give the pairs [w[c][n'], w[c + 2][n']] (PKHBT / PKHTB + SXTB16, no stores) for
 * SMLAD with [h(c), h(c + 2)] (rows c + 1, c + 3 likewise): 16 MACs in 29 instructions.
 *     hs: per quad of output channels [h(c), h(c+2)], [h(c+1), h(c+3)] (SXTB16 order) */
typedef struct {
    const int32_t *hs, *hend;  /* expanded h, quads */
    const int8_t *w;           /* w[0][n] */
    int32_t in;                /* bytes per weight row */
    int32_t acc[4];            /* in and out */
} fc_ig_ctx;

__attribute__((naked)) static void fc_ig_cols4(fc_ig_ctx *c)
{
    (void)c;
#define FC_IG_ROWS(H)                                                                  \
    "ldr r6, [r12]\n\t"                                                                \
    "ldr r7, [r12, r9]\n\t"                                                            \
    "pkhtb r8, r7, r6, asr #16\n\t"                                                    \
    "pkhbt r6, r6, r7, lsl #16\n\t"                                                    \
    "sxtb16 r7, r6\n\t"                                                                \
    "smlad r0, r7, " H ", r0\n\t"                                                      \
    "sxtb16 r7, r6, ror #8\n\t"                                                        \
    "smlad r1, r7, " H ", r1\n\t"                                                      \
    "sxtb16 r7, r8\n\t"                                                                \
    "smlad r2, r7, " H ", r2\n\t"                                                      \
    "sxtb16 r7, r8, ror #8\n\t"                                                        \
    "smlad r3, r7, " H ", r3\n\t"
    /* frame: 0 ctx, 4 hend */
    __asm volatile(
        "push {r4-r11, lr}\n\t"
        "sub sp, sp, #8\n\t"
        "str r0, [sp, #0]\n\t"
        "ldmia r0!, {r1, r2, r3, r4}\n\t"  /* hs hend w in */
        "str r2, [sp, #4]\n\t"
        "mov lr, r1\n\t"
        "mov r12, r3\n\t"
        "mov r10, r4\n\t"
        "add r9, r4, r4\n\t"
        "add r11, r9, r4\n\t"
        "ldmia r0, {r0, r1, r2, r3}\n\t"   /* acc */
        "1:\n\t"
        "ldrd r4, r5, [lr], #8\n\t"
        FC_IG_ROWS("r4")
        "add r12, r12, r10\n\t"
        FC_IG_ROWS("r5")
        "add r12, r12, r11\n\t"
        "ldr r6, [sp, #4]\n\t"
        "cmp lr, r6\n\t"
        "bne 1b\n\t"
        "ldr r4, [sp, #0]\n\t"
        "add r4, r4, #16\n\t"
        "stmia r4, {r0, r1, r2, r3}\n\t"
        "add sp, sp, #8\n\t"
        "pop {r4-r11, pc}\n\t");
#undef FC_IG_ROWS
}

/* hs from h (quads of output channels, the last padded with zeros); returns the quads */
static int32_t fc_expand_h(const int8_t *h, int32_t k, int32_t *hs)
{
    int32_t j = 0;
    for (; 4 * j + 4 <= k; j++) {
        const uint32_t v = tb_read32(h + 4 * j);
        hs[2 * j] = __sxtb16(v);
        hs[2 * j + 1] = tb_sxtb16_ror8(v);
    }
    if (4 * j < k) {
        uint32_t v = 0;
        for (int32_t i = 0; 4 * j + i < k; i++) v |= (uint32_t)(uint8_t)h[4 * j + i] << (8 * i);
        hs[2 * j] = __sxtb16(v);
        hs[2 * j + 1] = tb_sxtb16_ror8(v);
        j++;
    }
    return j;
}

/* acc[n] = sum_c w[c][n] h[c]: whole quads of output channels by the assembly, the last partial
 * quad and the last in_c % 4 columns in C. hs: (out_c + 3) / 4 * 2 words. */
static void fc_input_grad_dsp(int32_t in_c, int32_t out_c, const int8_t *h, const int8_t *w,
                              int32_t *acc, int32_t *hs)
{
    fc_expand_h(h, out_c, hs);
    const int32_t full = out_c / 4, n4 = in_c & ~3;
    fc_ig_ctx c;
    c.hs = hs;
    c.hend = hs + 2 * full;
    c.in = in_c;
    for (int32_t n = 0; n < in_c; n++) acc[n] = 0;
    if (full)
        for (int32_t n = 0; n < n4; n += 4) {
            c.w = w + n;
            c.acc[0] = c.acc[1] = c.acc[2] = c.acc[3] = 0;
            fc_ig_cols4(&c);
            acc[n] = c.acc[0], acc[n + 1] = c.acc[1], acc[n + 2] = c.acc[2], acc[n + 3] = c.acc[3];
        }
    for (int32_t k = 4 * full; k < out_c; k++)
        for (int32_t n = 0; n < n4; n++) acc[n] += w[k * in_c + n] * h[k];
    for (int32_t k = 0; k < out_c; k++)
        for (int32_t n = n4; n < in_c; n++) acc[n] += w[k * in_c + n] * h[k];
}

/* Weight gradient, one position: the outer product gw[c][j] = g[c] (x[sel j] + offset), eight
 * products per LDM / STM (MUL on the offset inputs expanded to int32). */
typedef struct {
    const int32_t *xo, *xend;  /* x[sel j] + offset, a multiple of 8 */
    int32_t *y;                /* the first row's output */
    const int8_t *g, *gend;    /* g of the rows */
    int32_t skip;              /* bytes from a row's end to the next row's start */
} fc_wg_ctx;

__attribute__((naked)) static void fc_wg_rows(const fc_wg_ctx *c)
{
    (void)c;
    /* frame: 0 gend, 4 skip; r9 xo, r10 y, r11 xend, r12 xo start, lr g */
    __asm volatile(
        "push {r4-r11, lr}\n\t"
        "sub sp, sp, #8\n\t"
        "ldmia r0, {r1, r2, r3, r4, r5, r6}\n\t"  /* xo xend y g gend skip */
        "strd r5, r6, [sp, #0]\n\t"
        "mov r12, r1\n\t"
        "mov r11, r2\n\t"
        "mov r10, r3\n\t"
        "mov lr, r4\n\t"
        "1:\n\t"
        "ldrsb r8, [lr], #1\n\t"
        "mov r9, r12\n\t"
        "2:\n\t"
        "ldmia r9!, {r0, r1, r2, r3, r4, r5, r6, r7}\n\t"
        "mul r0, r0, r8\n\t"
        "mul r1, r1, r8\n\t"
        "mul r2, r2, r8\n\t"
        "mul r3, r3, r8\n\t"
        "mul r4, r4, r8\n\t"
        "mul r5, r5, r8\n\t"
        "mul r6, r6, r8\n\t"
        "mul r7, r7, r8\n\t"
        "stmia r10!, {r0, r1, r2, r3, r4, r5, r6, r7}\n\t"
        "cmp r9, r11\n\t"
        "bne 2b\n\t"
        "ldrd r0, r1, [sp, #0]\n\t"
        "add r10, r10, r1\n\t"
        "cmp lr, r0\n\t"
        "bne 1b\n\t"
        "add sp, sp, #8\n\t"
        "pop {r4-r11, pc}\n\t");
}

#define TB_FC_WG_CHUNK 128

static void fc_weight_grad_dsp(const int8_t *x, int32_t input_offset, const int8_t *g,
                               const int32_t *sel, int32_t n_sel, int32_t c_begin, int32_t c_end,
                               int32_t *grad_w)
{
    int32_t xo[TB_FC_WG_CHUNK];
    for (int32_t j0 = 0; j0 < n_sel; j0 += TB_FC_WG_CHUNK) {
        const int32_t jn = n_sel - j0 < TB_FC_WG_CHUNK ? n_sel - j0 : TB_FC_WG_CHUNK;
        const int32_t j8 = jn & ~7;
        for (int32_t j = 0; j < jn; j++) xo[j] = x[sel[j0 + j]] + input_offset;
        if (j8) {
            fc_wg_ctx c;
            c.xo = xo;
            c.xend = xo + j8;
            c.y = grad_w + j0;
            c.g = g + c_begin;
            c.gend = g + c_end;
            c.skip = 4 * (n_sel - j8);
            fc_wg_rows(&c);
        }
        for (int32_t c = c_begin; c < c_end; c++)
            for (int32_t j = j8; j < jn; j++)
                grad_w[(c - c_begin) * n_sel + j0 + j] = xo[j] * g[c];
    }
}

/* ---- input gradient: acc[p][n] = sum_c w[c][n] h[p][c], the trio core with rows = positions,
 * columns = input channels (the transposed weights, streamed once per call), reduction =
 * output channels in blocks of 2 TB_ACC_MAXQ. */
static void input_grad_dsp(int32_t n_pos, int32_t in_c, int32_t out_c, const int8_t *h,
                           const int8_t *w, int32_t *acc, int32_t *scratch)
{
    const int32_t nqm = tb_acc_nq(out_c);
    int32_t *xs = scratch, *ws = scratch + tb_acc_trio_words(nqm);
    for (int32_t k0 = 0; k0 < out_c; k0 += 2 * nqm) {
        const int32_t kn = out_c - k0 < 2 * nqm ? out_c - k0 : 2 * nqm;
        const int32_t nq = tb_acc_nq(kn);
        for (int32_t n0 = 0; n0 < in_c; n0 += TB_ACC_NB) {
            const int32_t nn = in_c - n0 < TB_ACC_NB ? in_c - n0 : TB_ACC_NB;
            tb_acc_stream_transposed(w, in_c, k0, kn, n0, nn, nq, ws);
            for (int32_t p = 0; p < n_pos; p += 3) {
                int32_t *y[3];
                for (int32_t r = 0; r < 3; r++) {
                    y[r] = 0;
                    if (p + r < n_pos) {
                        tb_acc_expand_row(h + (p + r) * out_c + k0, kn, 0, nq, r, xs);
                        y[r] = acc + (p + r) * in_c + n0;
                    }
                }
                tb_acc_run(xs, ws, nq, nn, y[0], y[1], y[2], k0 > 0);
            }
        }
    }
}
#endif

tb_status tb_pointwise_weight_grad_s8(int32_t n_pos, int32_t in_c, const int8_t *x,
                                      int32_t input_offset, int32_t out_c, const int8_t *g,
                                      const int32_t *sel, int32_t n_sel,
                                      int32_t c_begin, int32_t c_end, int32_t *grad_w)
{
    if (n_pos <= 0 || n_pos > TB_GRAD_MAX_POSITIONS || in_c <= 0 || out_c <= 0 ||
        input_offset < -128 || input_offset > 128 || c_begin < 0 || c_begin >= c_end ||
        c_end > out_c || !tb_channels_ok(sel, n_sel, in_c))
        return TB_ERR_ARG;
#if TB_DSP
    if (n_pos == 1)
        fc_weight_grad_dsp(x, input_offset, g, sel, n_sel, c_begin, c_end, grad_w);
    else
        weight_grad_dsp(n_pos, in_c, x, input_offset, out_c, g, sel, n_sel, c_begin, c_end, grad_w);
    return TB_OK;
#endif
    /* the plain-C path: the readable reference */
    for (int32_t c = c_begin; c < c_end; c++) {
        for (int32_t j = 0; j < n_sel; j++) {
            int32_t acc = 0;
            for (int32_t p = 0; p < n_pos; p++)
                acc += ((int32_t)x[p * in_c + sel[j]] + input_offset) * g[p * out_c + c];
            grad_w[(c - c_begin) * n_sel + j] = acc;
        }
    }
    return TB_OK;
}

/* Same size on every build (the host plans the device's memory with it): what the DSP path uses,
 * a trio buffer and a stream block for the reduction blocks of out_c. */
int32_t tb_pointwise_input_grad_s8_scratch_bytes(int32_t out_c)
{
    if (out_c <= 0) return 0;
    const int32_t nq = tb_acc_nq(out_c);
    return 4 * (tb_acc_trio_words(nq) + tb_acc_stream_words(nq)) + 16;
}

tb_status tb_pointwise_input_grad_s8(int32_t n_pos, int32_t in_c, int32_t out_c,
                                     const int8_t *h, const int8_t *w, int32_t *acc,
                                     void *scratch)
{
    if (n_pos <= 0 || in_c <= 0 || out_c <= 0 || out_c > TB_GRAD_MAX_FAN_OUT) return TB_ERR_ARG;
#if TB_DSP
    /* one position: the expanded h, (out_c + 3) / 4 * 2 words, must fit the scratch */
    if (scratch && (n_pos > 1 || (out_c + 3) / 4 * 2 <=
                                     (tb_pointwise_input_grad_s8_scratch_bytes(out_c) - 16) / 4)) {
        int32_t *s = (int32_t *)(((uintptr_t)scratch + 15u) & ~(uintptr_t)15u);
        if (n_pos == 1)
            fc_input_grad_dsp(in_c, out_c, h, w, acc, s);
        else
            input_grad_dsp(n_pos, in_c, out_c, h, w, acc, s);
        return TB_OK;
    }
#else
    (void)scratch;
#endif
    /* the plain-C path: the readable reference */
    for (int32_t p = 0; p < n_pos; p++) {
        int32_t *ap = acc + p * in_c;
        for (int32_t i = 0; i < in_c; i++) ap[i] = 0;
        for (int32_t c = 0; c < out_c; c++) {
            const int32_t hv = h[p * out_c + c];
            const int8_t *wc = w + c * in_c;
            for (int32_t i = 0; i < in_c; i++) ap[i] += wc[i] * hv;
        }
    }
    return TB_OK;
}
