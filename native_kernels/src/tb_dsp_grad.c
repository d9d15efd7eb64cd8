/* The int32-accumulating matrix core of the backward kernels (tb_dsp_grad.h). Only built with
 * TB_DSP. The inner loop is assembly for the reasons given in tb_dsp_gemm.c (fourteen live values,
 * LDM/LDRD operand loads); it transcribes the outline in the comment above it and is checked bit
 * for bit against the plain-C kernels (bench/kernels, tests/test_target_qemu.py). */
#include "tb_dsp_grad.h"

#if TB_DSP
#include <string.h>

/* ---------------------------------------------------------------- trio: 3 rows x 2 columns
 *
 * for each duo until wend (r12 walks the stream):
 *     a[r][i] = 0 (set) or y_r[i] (add)            (a[.][0]: r0-r2, a[.][1]: r3-r5)
 *     for each pair step q:                        (r11 walks xs; unrolled, entered at the step
 *         x0, x1, x2 = xs[3q .. 3q + 2]              that leaves nq steps, no loop counter)
 *         w0, w1 = next 2 stream words
 *         a[r][i] = SMLAD(xr, wi, a[r][i])         (6 SMLADs, 12 MACs; the set form's first
 *     y_r[0..1] = a[r][0..1]; y_r += 2              step is SMUAD)
 * Frame: 0 y0, 4 y1, 8 y2, 12 xs, 16 entry (absolute), 20 wend. */
#define ACC_STEP TB_DSP_SMLAD_3X2_STEP
#define ACC_STEP4 ACC_STEP ACC_STEP ACC_STEP ACC_STEP
/* frame: 0 y0, 4 y1, 8 y2, 12 xs, 16 entry (absolute), 20 wend, 24 the duo head (set or add) */
__attribute__((naked)) void tb_dsp_acc_trio(const tb_acc_ctx *c)
{
    (void)c;
    __asm volatile(
        "push {r4-r11, lr}\n\t"
        "sub sp, sp, #32\n\t"
        "ldr r8, [r0, #28]\n\t"                       /* add */
        "ldmia r0, {r1, r2, r3, r4, r5, r6, r7}\n\t"  /* y0 y1 y2 xs entry wend ws */
        "adr r9, 5f\n\t"
        "add r5, r5, r9\n\t"
        "cmp r8, #0\n\t"
        "ite eq\n\t"
        "adreq r8, 1f\n\t"
        "adrne r8, 2f\n\t"
        "orr r8, r8, #1\n\t"                          /* a Thumb address for LDR pc */
        "stmia sp, {r1, r2, r3, r4, r5, r6, r8}\n\t"
        "mov r12, r7\n\t"
        "mov pc, r8\n\t"
        ".p2align 2\n\t"
        "1:\n\t"                                      /* set: the first step without accumulators */
        "ldr r11, [sp, #12]\n\t"
        "ldmia r11!, {r6, r7, r8}\n\t"
        "ldrd r9, r10, [r12], #8\n\t"
        "smuad r0, r6, r9\n\t"
        "smuad r1, r7, r9\n\t"
        "smuad r2, r8, r9\n\t"
        "smuad r3, r6, r10\n\t"
        "smuad r4, r7, r10\n\t"
        "smuad r5, r8, r10\n\t"
        "ldr lr, [sp, #16]\n\t"
        "add lr, lr, #32\n\t"                         /* one step fewer than the add form */
        "mov pc, lr\n\t"
        ".p2align 2\n\t"
        "2:\n\t"                                      /* add: the accumulators from y */
        "ldmia sp, {r8, r9, r10, r11}\n\t"
        "ldrd r0, r3, [r8]\n\t"
        "ldrd r1, r4, [r9]\n\t"
        "ldrd r2, r5, [r10]\n\t"
        "ldr lr, [sp, #16]\n\t"
        "mov pc, lr\n\t"
        ".p2align 2\n\t"
        "5:\n\t"
        ACC_STEP4 ACC_STEP4 ACC_STEP4 ACC_STEP4 ACC_STEP4 ACC_STEP4
        "ldmia sp, {r8, r9, r10}\n\t"
        "strd r0, r3, [r8], #8\n\t"
        "strd r1, r4, [r9], #8\n\t"
        "strd r2, r5, [r10], #8\n\t"
        "stmia sp, {r8, r9, r10}\n\t"
        "ldr lr, [sp, #20]\n\t"
        "cmp r12, lr\n\t"
        "beq 9f\n\t"
        "ldr pc, [sp, #24]\n\t"
        "9:\n\t"
        "add sp, sp, #32\n\t"
        "pop {r4-r11, pc}\n\t");
}
#undef ACC_STEP
#undef ACC_STEP4

void tb_acc_run(const int32_t *xs, const int32_t *ws, int32_t nq, int32_t nn, int32_t *y0,
                int32_t *y1, int32_t *y2, int add)
{
    int32_t spill[2][TB_ACC_NB];
    int32_t last[6];
    const int32_t full = nn / 2;
    tb_acc_ctx c;
    c.xs = xs;
    c.entry = tb_acc_entry(nq);
    c.add = add;
    c.y0 = y0;
    c.y1 = y1 ? y1 : spill[0];
    c.y2 = y2 ? y2 : spill[1];
    if (full) {
        c.ws = ws;
        c.wend = ws + full * 2 * nq;
        tb_dsp_acc_trio(&c);
    }
    if (nn & 1) { /* the last column alone: its duo runs into a buffer */
        int32_t *yr[3] = {y0, y1, y2};
        for (int32_t r = 0; r < 3; r++) last[2 * r] = add && yr[r] ? yr[r][nn - 1] : 0;
        last[1] = last[3] = last[5] = 0;
        c.y0 = last;
        c.y1 = last + 2;
        c.y2 = last + 4;
        c.ws = ws + full * 2 * nq;
        c.wend = c.ws + 2 * nq;
        tb_dsp_acc_trio(&c);
        for (int32_t r = 0; r < 3; r++)
            if (yr[r]) yr[r][nn - 1] = last[2 * r];
    }
}

/* ---------------------------------------------------------------- expansion (C) */

/* 4 bytes of row at 4j, zero past k */
static uint32_t word_or_tail(const int8_t *row, int32_t j, int32_t k)
{
    if (4 * j + 4 <= k) return tb_read32(row + 4 * j);
    uint32_t v = 0;
    for (int32_t i = 0; 4 * j + i < k && i < 4; i++) v |= (uint32_t)(uint8_t)row[4 * j + i] << (8 * i);
    return v;
}

void tb_acc_expand_row(const int8_t *x, int32_t k, int32_t offset, int32_t nq, int32_t r,
                       int32_t *xs)
{
    const int32_t off2 = (int32_t)(((uint32_t)offset & 0xFFFFu) | ((uint32_t)offset << 16));
    int32_t *d = xs + r;
    int32_t j = 0;
    for (; 4 * j + 4 <= k; j++, d += 6) {
        const uint32_t v = tb_read32(x + 4 * j);
        d[0] = __sxtab16(off2, v);
        d[3] = tb_sxtab16_ror8(off2, v);
    }
    for (; 2 * j < nq; j++, d += 6) {
        /* the tail: terms past k are zero (their partner's pairs are zero too, or not) */
        const uint32_t v = word_or_tail(x, j, k);
        int32_t e = __sxtab16(off2, v), o = tb_sxtab16_ror8(off2, v);
        if (offset) { /* the offset must not turn missing terms into nonzero values */
            const int32_t n = k - 4 * j; /* 0..3 terms present */
            const uint32_t me = (n > 0 ? 0xFFFFu : 0) | (n > 2 ? 0xFFFF0000u : 0);
            const uint32_t mo = (n > 1 ? 0xFFFFu : 0) | (n > 3 ? 0xFFFF0000u : 0);
            e = (int32_t)((uint32_t)e & me);
            o = (int32_t)((uint32_t)o & mo);
        }
        d[0] = e;
        d[3] = o;
    }
}

void tb_acc_stream_transposed(const int8_t *w, int32_t ld, int32_t c0, int32_t kn, int32_t n0,
                              int32_t nn, int32_t nq, int32_t *ws)
{
    const int32_t nd = (nn + 1) / 2;
    for (int32_t q = 0; q < nq; q++) {
        const int32_t ca = c0 + 4 * (q / 2) + (q & 1), cb = ca + 2; /* this step's two rows */
        const int8_t *ra = ca < c0 + kn ? w + ca * ld + n0 : 0;
        const int8_t *rb = cb < c0 + kn ? w + cb * ld + n0 : 0;
        int32_t *s = ws + 2 * q;
        int32_t n = 0;
        for (; n + 4 <= nn; n += 4, s += 4 * nq) {
            const uint32_t a = ra ? tb_read32(ra + n) : 0, b = rb ? tb_read32(rb + n) : 0;
            const uint32_t lo = tb_pack_lo(a, b), hi = tb_pack_hi(a, b);
            s[0] = __sxtb16(lo);
            s[1] = tb_sxtb16_ror8(lo);
            s[2 * nq] = __sxtb16(hi);
            s[2 * nq + 1] = tb_sxtb16_ror8(hi);
        }
        for (; n < 2 * nd; n++) {
            const int32_t va = ra && n < nn ? ra[n] : 0, vb = rb && n < nn ? rb[n] : 0;
            ws[(n / 2) * 2 * nq + 2 * q + (n & 1)] =
                (int32_t)(((uint32_t)va & 0xFFFFu) | ((uint32_t)vb << 16));
        }
    }
}

#else
typedef int tb_dsp_grad_unused; /* an empty translation unit is not ISO C */
#endif
