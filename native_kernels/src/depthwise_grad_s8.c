/* Depthwise k x k convolution backward (depth multiplier 1): every channel on its own. */
#include "tb_train.h"
#include "tb_grad.h"
#include "tb_checks.h"
#include "tb_dsp.h"
#include "tb_dsp_grad.h"

#if TB_DSP
/* DSP paths (docs/kernels.md, "Optimized kernels"): four adjacent channels at a time, each int8
 * word of four channels split by SXTB16 into [c0, c2] and [c1, c3] halfword pairs (SXTAB16 adds
 * the input offset), and SMLABB / SMLATT accumulate the four channels' products separately: four
 * MACs in four instructions, with no per-channel planes and the same code for every kernel size,
 * stride and padding. Rows are expanded into a band buffer on the stack (padding as zero words),
 * so the inner loops have no bounds checks. Channels past the last whole group of four (and, for
 * the weight gradient, trained channels that are not four adjacent ones) take the plain path. */
#define TB_DWG_WORDS 1024 /* band buffer: 4 KB */
#define TB_DWG_MAX_TAPS 49

static void dwg_expand(const int8_t *src, int32_t n, int32_t ch, int32_t off2, int32_t *dst)
{
    if (n > 0) tb_dsp_expand_quads(src, n, ch, off2, dst);
}

static void dwg_zero(int32_t *dst, int32_t n)
{
    tb_dsp_zero(dst, n);
}

/* ---- weight gradient, all taps of a band (assembly, one form per column stride XS = 8 sw):
 *     for each tap (ky, kx):                       acc: 4 words a tap, channels 0..3
 *         a = acc[tap]
 *         for each output row r of the band:       g rows contiguous, an even count of positions
 *             xp = xb + ky xrow + r xadv + 8 kx
 *             for each position: [xe xo] = *xp, xp += XS; [ge go] = *gp++
 *                 a0 = SMLABB(xe, ge), a2 = SMLATT(xe, ge), a1 = SMLABB(xo, go), a3 = SMLATT(xo, go)
 *         acc[tap] = a
 * Two positions per iteration: 16 MACs in 14 instructions. */
typedef struct {
    const int32_t *xb;  /* 0: x band (offset applied, padding 0), row i at xb + i xrow bytes */
    const int32_t *gb;  /* 4: g band, rows of gbytes */
    int32_t *acc;       /* 8: 4 words a tap, taps tstride bytes apart in (ky, kx) order */
    int32_t kh, kw;     /* 12, 16 */
    int32_t rows;       /* 20: output rows of the band */
    int32_t gbytes;     /* 24: bytes of a g row (8 x an even number of positions) */
    int32_t xrow;       /* 28: bytes of an x band row */
    int32_t xadv;       /* 32: sh xrow, from one output row's inputs to the next */
    int32_t tstride;    /* 36: bytes between taps' sums */
    int32_t add;        /* 40: 0: the sums are set (first band), else added to */
} dwg_w_ctx;

#define DWG_W_POS(XS)                                                                  \
    "ldrd r4, r5, [r8], #" #XS "\n\t"                                                  \
    "ldrd r6, r7, [r9], #8\n\t"                                                        \
    "smlabb r0, r4, r6, r0\n\t"                                                        \
    "smlatt r2, r4, r6, r2\n\t"                                                        \
    "smlabb r1, r5, r7, r1\n\t"                                                        \
    "smlatt r3, r5, r7, r3\n\t"
/* frame: 0..43 the context, 44 rows of ky left, 48 taps of kx left, 52 x of this ky row, 56 x of
 * this tap */
#define DWG_W_BODY(XS)                                                                 \
    "push {r4-r11, lr}\n\t"                                                            \
    "sub sp, sp, #60\n\t"                                                              \
    "ldmia r0, {r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11}\n\t"                     \
    "stmia sp, {r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11}\n\t"                     \
    "str r4, [sp, #44]\n\t"                                                            \
    "str r5, [sp, #48]\n\t"                                                            \
    "str r1, [sp, #52]\n\t"                                                            \
    "str r1, [sp, #56]\n\t"                                                            \
    "1:\n\t"                                                                           \
    "ldr r8, [sp, #8]\n\t"                                                             \
    "movs r0, #0\n\t"                                                                  \
    "movs r1, #0\n\t"                                                                  \
    "movs r2, #0\n\t"                                                                  \
    "movs r3, #0\n\t"                                                                  \
    "ldr r9, [sp, #40]\n\t"                                                            \
    "cmp r9, #0\n\t"                                                                   \
    "beq 4f\n\t"                                                                       \
    "ldmia r8, {r0, r1, r2, r3}\n\t"                                                   \
    "4:\n\t"                                                                           \
    "ldr r11, [sp, #56]\n\t"                                                           \
    "ldr r9, [sp, #4]\n\t"                                                             \
    "ldr r12, [sp, #20]\n\t"                                                           \
    "2:\n\t"                                                                           \
    "mov r8, r11\n\t"                                                                  \
    "ldr r10, [sp, #24]\n\t"                                                           \
    "add r10, r10, r9\n\t"                                                             \
    "3:\n\t"                                                                           \
    DWG_W_POS(XS) DWG_W_POS(XS)                                                        \
    "cmp r9, r10\n\t"                                                                  \
    "bne 3b\n\t"                                                                       \
    "ldr lr, [sp, #32]\n\t"                                                            \
    "add r11, r11, lr\n\t"                                                             \
    "subs r12, r12, #1\n\t"                                                            \
    "bne 2b\n\t"                                                                       \
    "ldrd r8, r9, [sp, #32]\n\t"  /* (xadv), tstride */                               \
    "ldr r8, [sp, #8]\n\t"                                                             \
    "stmia r8, {r0, r1, r2, r3}\n\t"                                                   \
    "add r8, r8, r9\n\t"                                                               \
    "str r8, [sp, #8]\n\t"                                                             \
    "ldrd r0, r1, [sp, #48]\n\t"  /* kx left, x of the ky row */                       \
    "ldr r2, [sp, #56]\n\t"                                                            \
    "add r2, r2, #8\n\t"                                                               \
    "str r2, [sp, #56]\n\t"                                                            \
    "subs r0, r0, #1\n\t"                                                              \
    "str r0, [sp, #48]\n\t"                                                            \
    "bne 1b\n\t"                                                                       \
    "ldr r2, [sp, #28]\n\t"                                                            \
    "add r1, r1, r2\n\t"                                                               \
    "str r1, [sp, #52]\n\t"                                                            \
    "str r1, [sp, #56]\n\t"                                                            \
    "ldr r0, [sp, #16]\n\t"                                                            \
    "str r0, [sp, #48]\n\t"                                                            \
    "ldr r0, [sp, #44]\n\t"                                                            \
    "subs r0, r0, #1\n\t"                                                              \
    "str r0, [sp, #44]\n\t"                                                            \
    "bne 1b\n\t"                                                                       \
    "add sp, sp, #60\n\t"                                                              \
    "pop {r4-r11, pc}\n\t"

__attribute__((naked)) static void dwg_wtaps_s1(const dwg_w_ctx *c)
{
    (void)c;
    __asm volatile(DWG_W_BODY(8));
}

__attribute__((naked)) static void dwg_wtaps_s2(const dwg_w_ctx *c)
{
    (void)c;
    __asm volatile(DWG_W_BODY(16));
}
#undef DWG_W_POS
#undef DWG_W_BODY

/* weight gradient of channels c..c+3 (trained as sel index j..j+3) into grad_w[tap][j..j+3];
 * 0 if the shape does not fit (stride > 2, a band of one row too large) */
static int dw_weight_grad_group(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                                const int8_t *g, int32_t c, int32_t j, int32_t n_sel,
                                int32_t *grad_w)
{
    const int32_t kh = p->kernel_h, kw = p->kernel_w, sh = p->stride_h, sw = p->stride_w;
    const int32_t ch = in.c;
    const int32_t ow = (out.w + 1) & ~1;      /* g rows padded to an even count (zeros) */
    const int32_t xw = (ow - 1) * sw + kw;    /* the columns the windows span, from -pad_left */
    const int32_t gwords = 2 * ow, xwords = 2 * xw;
    if (kh * kw > TB_DWG_MAX_TAPS || sw > 2 || kh < sh) return 0;
    /* output rows per band: their g rows and the input rows under them fit the buffer */
    int32_t rows = (TB_DWG_WORDS - (kh - sh) * xwords) / (gwords + sh * xwords);
    if (rows < 1) return 0;
    if (rows > out.h) rows = out.h;
    int32_t buf[TB_DWG_WORDS];
    int32_t *gb = buf, *xb = buf + rows * gwords;
    const int32_t off2 = (int32_t)(((uint32_t)p->input_offset & 0xFFFFu) |
                                   ((uint32_t)p->input_offset << 16));
    /* input columns -pad_left .. xw - pad_left - 1: inside [0, in.w) expanded, else 0 */
    const int32_t xa = p->pad_left, xe = in.w + p->pad_left < xw ? in.w + p->pad_left : xw;
    dwg_w_ctx k;
    k.gb = gb;
    k.xb = xb;
    k.kh = kh;
    k.kw = kw;
    k.gbytes = 4 * gwords;
    k.xrow = 4 * xwords;
    k.xadv = 4 * sh * xwords;
    k.tstride = 4 * n_sel;
    for (int32_t oy0 = 0; oy0 < out.h; oy0 += rows) {
        const int32_t rn = out.h - oy0 < rows ? out.h - oy0 : rows;
        for (int32_t r = 0; r < rn; r++) {
            dwg_expand(g + (oy0 + r) * out.w * ch + c, out.w, ch, 0, gb + r * gwords);
            if (ow > out.w) gb[r * gwords + 2 * out.w] = gb[r * gwords + 2 * out.w + 1] = 0;
        }
        const int32_t xrows = (rn - 1) * sh + kh;
        for (int32_t i = 0; i < xrows; i++) {
            const int32_t iy = oy0 * sh - p->pad_top + i;
            int32_t *d = xb + i * xwords;
            if (iy < 0 || iy >= in.h) {
                dwg_zero(d, xwords);
                continue;
            }
            dwg_zero(d, 2 * xa);
            dwg_expand(x + iy * in.w * ch + c, xe - xa, ch, off2, d + 2 * xa);
            dwg_zero(d + 2 * xe, xwords - 2 * xe);
        }
        k.acc = grad_w + j; /* per tap the four channels' sums, in channel order */
        k.rows = rn;
        k.add = oy0 > 0;
        (sw == 1 ? dwg_wtaps_s1 : dwg_wtaps_s2)(&k);
    }
    return 1;
}

/* ---- input gradient, one tap over a band (assembly): the tap's products scattered into acc
 *     [we wo] = w of the tap
 *     for each h row r: hp = hp0 + r hrow, ap = ap0 + r arow
 *         for each of n positions: [he ho] = *hp++; acc4 at ap += ([he ho] x [we wo]); ap += astep
 * Two positions per iteration (an odd count starts with one): 8 MACs in 18 instructions. */
typedef struct {
    const int32_t *w;    /* 0: the tap's two words */
    const int32_t *hp;   /* 4: first h position */
    int32_t hrow;        /* 8: bytes between h rows */
    int32_t n;           /* 12: positions per row, >= 1 */
    int32_t rows;        /* 16: >= 1 */
    int32_t *ap;         /* 20: acc of the first position (4 channels) */
    int32_t astep;       /* 24: bytes between positions' acc */
    int32_t arow;        /* 28: bytes between rows' acc */
} dwg_i_ctx;

#define DWG_I_POS                                                                      \
    "ldrd r4, r5, [r12], #8\n\t"                                                       \
    "ldmia lr, {r0, r1, r2, r3}\n\t"                                                   \
    "smlabb r0, r4, r6, r0\n\t"                                                        \
    "smlatt r2, r4, r6, r2\n\t"                                                        \
    "smlabb r1, r5, r7, r1\n\t"                                                        \
    "smlatt r3, r5, r7, r3\n\t"                                                        \
    "stmia lr, {r0, r1, r2, r3}\n\t"                                                   \
    "add lr, lr, r9\n\t"
__attribute__((naked)) static void dwg_itap(const dwg_i_ctx *c)
{
    (void)c;
    /* r6 r7 w, r8 hp of the row, r9 astep, r10 ap of the row, r11 rows left, r12 hp, lr ap */
    __asm volatile(
        "push {r4-r11, lr}\n\t"
        "sub sp, sp, #32\n\t"
        "ldmia r0, {r1, r2, r3, r4, r5, r6, r7, r8}\n\t"
        "stmia sp, {r1, r2, r3, r4, r5, r6, r7, r8}\n\t"
        "ldrd r6, r7, [r1]\n\t"
        "mov r8, r2\n\t"
        "ldr r9, [sp, #24]\n\t"
        "ldr r10, [sp, #20]\n\t"
        "ldr r11, [sp, #16]\n\t"
        "1:\n\t"
        "mov r12, r8\n\t"
        "mov lr, r10\n\t"
        "ldr r4, [sp, #12]\n\t"
        "add r5, r12, r4, lsl #3\n\t"   /* h end of the row */
        "str r5, [sp, #4]\n\t"
        "tst r4, #1\n\t"
        "beq 2f\n\t"
        DWG_I_POS
        "ldr r4, [sp, #4]\n\t"
        "cmp r12, r4\n\t"
        "beq 3f\n\t"
        "2:\n\t"
        DWG_I_POS
        DWG_I_POS
        "ldr r4, [sp, #4]\n\t"
        "cmp r12, r4\n\t"
        "bne 2b\n\t"
        "3:\n\t"
        "ldr r4, [sp, #8]\n\t"
        "add r8, r8, r4\n\t"
        "ldr r4, [sp, #28]\n\t"
        "add r10, r10, r4\n\t"
        "subs r11, r11, #1\n\t"
        "bne 1b\n\t"
        "add sp, sp, #32\n\t"
        "pop {r4-r11, pc}\n\t");
}
#undef DWG_I_POS

/* input gradient of channels c..c+3: acc zeroed, then every tap's products scattered onto the
 * stride grid (the output positions whose window puts the tap inside the input) */
static int dw_input_grad_group(const tb_conv_params *p, tb_shape in, tb_shape out, const int8_t *h,
                               const int8_t *w, int32_t c, int32_t *acc)
{
    const int32_t kh = p->kernel_h, kw = p->kernel_w, sh = p->stride_h, sw = p->stride_w;
    const int32_t pt = p->pad_top, pl = p->pad_left, ch = in.c;
    const int32_t hwords = 2 * out.w;
    int32_t rows = TB_DWG_WORDS / hwords; /* h rows a band holds */
    if (kh * kw > TB_DWG_MAX_TAPS || rows < 1) return 0;
    int32_t buf[TB_DWG_WORDS];
    int32_t wx[2 * TB_DWG_MAX_TAPS];
    for (int32_t t = 0; t < kh * kw; t++) {
        const uint32_t v = tb_read32(w + t * ch + c);
        wx[2 * t] = __sxtb16(v);
        wx[2 * t + 1] = tb_sxtb16_ror8(v);
    }
    dwg_i_ctx k;
    k.hrow = 4 * hwords;
    k.astep = 4 * sw * ch;
    k.arow = 4 * sh * in.w * ch;
    for (int32_t oy0 = 0; oy0 < out.h; oy0 += rows) {
        const int32_t rn = out.h - oy0 < rows ? out.h - oy0 : rows;
        for (int32_t r = 0; r < rn; r++)
            dwg_expand(h + (oy0 + r) * out.w * ch + c, out.w, ch, 0, buf + r * hwords);
        for (int32_t ky = 0; ky < kh; ky++) {
            /* rows oy of the band with iy = oy sh - pt + ky inside */
            int32_t ra = 0, rb = rn;
            while (ra < rb && (oy0 + ra) * sh - pt + ky < 0) ra++;
            while (rb > ra && (oy0 + rb - 1) * sh - pt + ky >= in.h) rb--;
            if (ra == rb) continue;
            for (int32_t kx = 0; kx < kw; kx++) {
                int32_t xa = 0, xb = out.w;
                while (xa < xb && xa * sw - pl + kx < 0) xa++;
                while (xb > xa && (xb - 1) * sw - pl + kx >= in.w) xb--;
                if (xa == xb) continue;
                const int32_t iy = (oy0 + ra) * sh - pt + ky, ix = xa * sw - pl + kx;
                k.w = wx + 2 * (ky * kw + kx);
                k.hp = buf + ra * hwords + 2 * xa;
                k.n = xb - xa;
                k.rows = rb - ra;
                k.ap = acc + (iy * in.w + ix) * ch + c;
                dwg_itap(&k);
            }
        }
    }
    return 1;
}

#define TB_DWG_MAX_SEL 1024 /* trained channels the groups look at (a bit each) */

/* Runs the groups of four adjacent trained channels among sel[0..TB_DWG_MAX_SEL); marks them in
 * done (a bit per index j) and returns how many; the plain path does the rest. */
static int32_t dw_weight_grad_dsp(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                  tb_shape out, const int8_t *g, const int32_t *sel, int32_t n_sel,
                                  int32_t *grad_w, uint32_t *done)
{
    int32_t n = 0;
    for (int32_t j = 0; j < TB_DWG_MAX_SEL / 32; j++) done[j] = 0;
    for (int32_t j = 0; j + 4 <= n_sel && j + 4 <= TB_DWG_MAX_SEL;) {
        if (sel[j + 3] - sel[j] == 3 && dw_weight_grad_group(p, in, x, out, g, sel[j], j, n_sel, grad_w)) {
            for (int32_t i = j; i < j + 4; i++) done[i >> 5] |= 1u << (i & 31);
            n += 4, j += 4;
        } else {
            j++;
        }
    }
    return n;
}

/* Zeroes acc and runs the groups of four channels; returns the first channel it did not do. */
static int32_t dw_input_grad_dsp(const tb_conv_params *p, tb_shape in, tb_shape out,
                                 const int8_t *h, const int8_t *w, int32_t *acc)
{
    const int32_t c4 = in.c & ~3;
    dwg_zero(acc, in.h * in.w * in.c); /* the groups add every tap's products */
    for (int32_t c = 0; c < c4; c += 4)
        if (!dw_input_grad_group(p, in, out, h, w, c, acc)) return c;
    return c4;
}
#endif

tb_status tb_depthwise_weight_grad_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                      tb_shape out, const int8_t *g,
                                      const int32_t *sel, int32_t n_sel, int32_t *grad_w)
{
    if (!tb_conv_geometry_ok(p, in, out) || in.c != out.c || out.h * out.w > TB_GRAD_MAX_POSITIONS ||
        p->input_offset < -128 || p->input_offset > 128 || !tb_channels_ok(sel, n_sel, in.c))
        return TB_ERR_ARG;
#if TB_DSP
    uint32_t done[TB_DWG_MAX_SEL / 32];
    if (dw_weight_grad_dsp(p, in, x, out, g, sel, n_sel, grad_w, done) == n_sel) return TB_OK;
#endif
    /* the plain-C path: the readable reference (on the DSP build, for the channels left) */
    const int32_t ch = in.c;
    int32_t *gw = grad_w;
    for (int32_t ky = 0; ky < p->kernel_h; ky++) {
        for (int32_t kx = 0; kx < p->kernel_w; kx++) {
            for (int32_t j = 0; j < n_sel; j++) {
#if TB_DSP
                if (j < TB_DWG_MAX_SEL && (done[j >> 5] >> (j & 31)) & 1u) {
                    gw++;
                    continue;
                }
#endif
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
    /* the plain-C path: the readable reference (on the DSP build, for the channels left) */
    const int32_t ch = in.c;
#if TB_DSP
    const int32_t c0 = dw_input_grad_dsp(p, in, out, h, w, acc); /* zeroes acc */
    if (c0 == ch) return TB_OK;
#else
    const int32_t c0 = 0;
    for (int32_t i = 0; i < in.h * in.w * ch; i++) acc[i] = 0;
#endif
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
                    for (int32_t c = c0; c < ch; c++) ap[c] += wp[c] * hp[c];
                }
            }
        }
    }
    return TB_OK;
}
