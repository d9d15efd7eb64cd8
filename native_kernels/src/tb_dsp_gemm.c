/* The int8 matrix core of the DSP paths (tb_dsp_gemm.h). Only built with TB_DSP.
 *
 * The inner loops are assembly (naked functions, AAPCS: r0 = the context, r4-r11 saved): GCC 12
 * neither folds the rotate into SXTB16 nor keeps fourteen live values in registers with LDM/LDRD
 * loads, and instructions per MAC is what this core is measured by. Each transcribes the C-like
 * outline in the comment above it; all are checked bit for bit against the plain-C kernels
 * (bench/kernels, tests/test_target_qemu.py). */
#include "tb_dsp_gemm.h"
#include "tb_kernels.h"

#if TB_DSP
#include <string.h>

#include "tb_requant.h"

/* ---------------------------------------------------------------- trio: 3 positions x 2 channels
 *
 * for each channel pair ("duo") until one whose second exponent word has bit 31 set (ASR uses
 * only the low byte of its shift register; r12 walks the stream):
 *     a[p][i] = bias[i]                          (a[.][0]: r0-r2, a[.][1]: r3-r5)
 *     for each input pair q:                     (r11 walks xs; unrolled, no loop)
 *         x0, x1, x2 = xs[3q .. 3q + 2]           (r6-r8: LDM, positions 0-2)
 *         w0, w1 = next 2 stream words            (r9, r10: LDRD, channels 0-1)
 *         a[p][i] = SMLAD(xp, wi, a[p][i])        (6 SMLADs, 12 MACs)
 *     for each channel i: M, K, e = next 3 stream words
 *         y_p[i] = SSAT8((SMMLAR(a, M, K + (a < 0 ? -1 : 0))) >> e)   (tb_dsp.h; _single:
 *                  SSAT8(SMMLA(a, M, K) >> e))
 *     y_0 at y, y_1 at y + oc, y_2 at y + oc2; y += 2
 */
#define TRIO_STEP TB_DSP_SMLAD_3X2_STEP
#define TRIO_OUT(REQ, A, DST)            \
    REQ(A, A, "r6", "r7", "r9")          \
    "asr " A ", " A ", r8\n\t"           \
    "ssat " A ", #8, " A "\n\t"          \
    "strb " A ", " DST "\n\t"
#define TRIO_REQUANT(REQ, A2, A1, A0)             \
    "ldmia r12!, {r6, r7, r8}\n\t" /* M K e */    \
    TRIO_OUT(REQ, A2, "[r10, lr]")                \
    TRIO_OUT(REQ, A1, "[r10, r11]")               \
    TRIO_OUT(REQ, A0, "[r10], #1")
#define TRIO_TAIL(REQ)                                                             \
    "3:\n\t"                                                                       \
    "ldrd r10, r11, [sp, #8]\n\t"             /* y, oc */                          \
    "ldr lr, [sp, #16]\n\t"                   /* oc2 */                            \
    TRIO_REQUANT(REQ, "r2", "r1", "r0")                                            \
    TRIO_REQUANT(REQ, "r5", "r4", "r3")                                            \
    "str r10, [sp, #8]\n\t"                                                        \
    "cmp r8, #0\n\t"                          /* the last duo's e has bit 31 */    \
    "bge 1b\n\t"                                                                   \
    "add sp, sp, #24\n\t"                                                          \
    "pop {r4-r11, pc}\n\t"

/* Up to 24 input pairs (k <= 48), no loop: after the first pair (with the biases) the call jumps
 * into a straight run of 23 pair steps at step 24 - pairs (ctx->entry: that offset in bytes; every
 * instruction of a step is 32-bit, 32 bytes a step). */
#define TRIO_STEP4 TRIO_STEP TRIO_STEP TRIO_STEP TRIO_STEP
#define TRIO_RUN(NAME, REQ)                                                          \
__attribute__((naked)) void NAME(const tb_gemm_ctx *ctx)                             \
{                                                                                    \
    (void)ctx;                                                                       \
    __asm volatile(                                                                  \
        "push {r4-r11, lr}\n\t"                                                      \
        "sub sp, sp, #24\n\t"                                                        \
        "ldmia r0, {r1, r2, r3, r4, r5, r6, r7}\n\t" /* xs entry ws - y oc oc2 */    \
        "adr r9, 5f\n\t"                                                             \
        "add r2, r2, r9\n\t"                                                         \
        "strd r1, r2, [sp, #0]\n\t"                                                  \
        "strd r5, r6, [sp, #8]\n\t"                                                  \
        "strd r7, r4, [sp, #16]\n\t"                                                 \
        "mov r12, r3\n\t"                                                            \
        "1:\n\t"                                                                     \
        "ldrd r11, lr, [sp, #0]\n\t"                                                 \
        "ldmia r12!, {r0, r3, r9, r10}\n\t"                                          \
        "ldmia r11!, {r6, r7, r8}\n\t"                                               \
        "smlad r1, r7, r9, r0\n\t"                                                   \
        "smlad r2, r8, r9, r0\n\t"                                                   \
        "smlad r0, r6, r9, r0\n\t"                                                   \
        "smlad r4, r7, r10, r3\n\t"                                                  \
        "smlad r5, r8, r10, r3\n\t"                                                  \
        "smlad r3, r6, r10, r3\n\t"                                                  \
        "mov pc, lr\n\t"                                                             \
        ".p2align 2\n\t"                                                             \
        "5:\n\t"                                                                     \
        TRIO_STEP4 TRIO_STEP4 TRIO_STEP4 TRIO_STEP4 TRIO_STEP4                       \
        TRIO_STEP TRIO_STEP TRIO_STEP                                                \
        TRIO_TAIL(REQ));                                                             \
}
TRIO_RUN(tb_dsp_gemm_trio_run, TB_DSP_REQ_TFLITE)
TRIO_RUN(tb_dsp_gemm_trio_run_single, TB_DSP_REQ_SINGLE)
#undef TRIO_STEP4
#undef TRIO_RUN
#undef TRIO_STEP
#undef TRIO_OUT
#undef TRIO_REQUANT
#undef TRIO_TAIL

/* Three consecutive positions' rows of k int8 (k a multiple of 8) expanded to x + offset into
 * the trio buffer (slot p of input pair q at xs[3q + p]): per 8 inputs two LDRs, four SXTAB16
 * (even and odd bytes, + offset) and four STRs.
 *     for p in 0..2: for each 4 inputs v: xs[3(2j) + p] = SXTAB16(off2, v);
 *                                          xs[3(2j + 1) + p] = SXTAB16(off2, v ror 8) */
__attribute__((naked)) void tb_dsp_trio_expand(const int8_t *x, int32_t k, int32_t off2,
                                               int32_t *xs)
{
    (void)x, (void)k, (void)off2, (void)xs;
    __asm volatile(
        "push {r4-r10, lr}\n\t"
        "mov r10, r3\n\t"
        "mov lr, #3\n\t"
        "1:\n\t"
        "add r9, r0, r1\n\t"
        "2:\n\t"
        "ldr r4, [r0], #4\n\t"
        "ldr r5, [r0], #4\n\t"
        "sxtab16 r6, r2, r4\n\t"
        "sxtab16 r7, r2, r4, ror #8\n\t"
        "sxtab16 r8, r2, r5\n\t"
        "sxtab16 r12, r2, r5, ror #8\n\t"
        "str r7, [r3, #12]\n\t"
        "str r8, [r3, #24]\n\t"
        "str r12, [r3, #36]\n\t"
        "str r6, [r3], #48\n\t"
        "cmp r0, r9\n\t"
        "bne 2b\n\t"
        "add r10, r10, #4\n\t"
        "mov r3, r10\n\t"
        "subs lr, lr, #1\n\t"
        "bne 1b\n\t"
        "pop {r4-r10, pc}\n\t");
}

/* ---------------------------------------------------------------- quad: 4 positions x 1 channel
 *
 * for each channel (weights: raw int8 rows, r11 walks them until wend; constants rq[c] =
 * {bias, M, K, e}, the bias of the next channel preloaded into r3):
 *     a[p] = bias                                 (r0-r3)
 *     for each group of 4 inputs:                 (r10 walks xs until r12 = xend)
 *         w = next 4 weight bytes; we = SXTB16(w), wo = SXTB16(w ror 8)   (r8, r9)
 *         for p: a[p] = SMLAD(xs even of p, we, SMLAD(xs odd of p, wo, a[p]))  (LDM 2 x 4)
 *     y_p = SSAT8(...) as in the trio, at y + p oc (p = 0..3); y += 1
 */
#define QUAD_STEP                         \
    "ldr lr, [r11], #4\n\t"               \
    "sxtb16 r8, lr\n\t"                   \
    "sxtb16 r9, lr, ror #8\n\t"           \
    "ldmia r10!, {r4, r5, r6, r7}\n\t"    \
    "smlad r0, r4, r8, r0\n\t"            \
    "smlad r0, r5, r9, r0\n\t"            \
    "smlad r1, r6, r8, r1\n\t"            \
    "smlad r1, r7, r9, r1\n\t"            \
    "ldmia r10!, {r4, r5, r6, r7}\n\t"    \
    "smlad r2, r4, r8, r2\n\t"            \
    "smlad r2, r5, r9, r2\n\t"            \
    "smlad r3, r6, r8, r3\n\t"            \
    "smlad r3, r7, r9, r3\n\t"
#define QUAD_OUT(REQ, A, DST)             \
    REQ(A, A, "r5", "r6", "r4")           \
    "asr " A ", " A ", r7\n\t"            \
    "ssat " A ", #8, " A "\n\t"           \
    "strb " A ", " DST "\n\t"
#define QUAD_FN(NAME, REQ)                                                           \
__attribute__((naked)) void NAME(const tb_gemm_quad_ctx *ctx)                        \
{                                                                                    \
    (void)ctx;                                                                       \
    /* frame: 0 xs, 4 xend, 8 y, 12 oc, 16 oc2, 20 oc3, 24 rq cursor, 28 wend */     \
    __asm volatile(                                                                  \
        "push {r4-r11, lr}\n\t"                                                      \
        "sub sp, sp, #32\n\t"                                                        \
        "ldmia r0, {r1, r2, r3, r4, r5, r6, r7, r8}\n\t" /* xs xend w wend rq y oc pad */ \
        "strd r1, r2, [sp, #0]\n\t"                                                  \
        "str r6, [sp, #8]\n\t"                                                       \
        "str r7, [sp, #12]\n\t"                                                      \
        "add r8, r7, r7\n\t"                                                         \
        "str r8, [sp, #16]\n\t"                                                      \
        "add r8, r8, r7\n\t"                                                         \
        "str r8, [sp, #20]\n\t"                                                      \
        "str r5, [sp, #24]\n\t"                                                      \
        "str r4, [sp, #28]\n\t"                                                      \
        "mov r11, r3\n\t"                                                            \
        "ldr r3, [r5]\n\t"                         /* first bias */                  \
        "1:\n\t"                                                                     \
        "ldrd r10, r12, [sp, #0]\n\t"                                                \
        "ldr lr, [r11], #4\n\t"                                                      \
        "sxtb16 r8, lr\n\t"                                                          \
        "sxtb16 r9, lr, ror #8\n\t"                                                  \
        "ldmia r10!, {r4, r5, r6, r7}\n\t"                                           \
        "smlad r0, r4, r8, r3\n\t"                                                   \
        "smlad r0, r5, r9, r0\n\t"                                                   \
        "smlad r1, r6, r8, r3\n\t"                                                   \
        "smlad r1, r7, r9, r1\n\t"                                                   \
        "ldmia r10!, {r4, r5, r6, r7}\n\t"                                           \
        "smlad r2, r4, r8, r3\n\t"                                                   \
        "smlad r2, r5, r9, r2\n\t"                                                   \
        "smlad r3, r6, r8, r3\n\t"                                                   \
        "smlad r3, r7, r9, r3\n\t"                                                   \
        QUAD_STEP                                                                    \
        "cmp r10, r12\n\t"                                                           \
        "beq 3f\n\t"                                                                 \
        "2:\n\t"                                                                     \
        QUAD_STEP                                                                    \
        QUAD_STEP                                                                    \
        "cmp r10, r12\n\t"                                                           \
        "bne 2b\n\t"                                                                 \
        "3:\n\t"                                                                     \
        "ldr r12, [sp, #24]\n\t"                                                     \
        "ldmia r12!, {r4, r5, r6, r7}\n\t"        /* bias (unused) M K e */          \
        "ldrd r8, r9, [sp, #8]\n\t"               /* y, oc */                        \
        "ldrd r10, lr, [sp, #16]\n\t"             /* oc2, oc3 */                     \
        QUAD_OUT(REQ, "r3", "[r8, lr]")                                              \
        QUAD_OUT(REQ, "r2", "[r8, r10]")                                             \
        QUAD_OUT(REQ, "r1", "[r8, r9]")                                              \
        QUAD_OUT(REQ, "r0", "[r8], #1")                                              \
        "str r8, [sp, #8]\n\t"                                                       \
        "str r12, [sp, #24]\n\t"                                                     \
        "ldr r3, [r12]\n\t"                        /* next bias (the table has one spare) */ \
        "ldr r0, [sp, #28]\n\t"                                                      \
        "cmp r11, r0\n\t"                                                            \
        "bne 1b\n\t"                                                                 \
        "add sp, sp, #32\n\t"                                                        \
        "pop {r4-r11, pc}\n\t");                                                     \
}
QUAD_FN(tb_dsp_gemm_quad, TB_DSP_REQ_TFLITE)
QUAD_FN(tb_dsp_gemm_quad_single, TB_DSP_REQ_SINGLE)
#undef QUAD_FN
#undef QUAD_STEP
#undef QUAD_OUT

/* ---------------------------------------------------------------- solo: rows of 8, 1 position
 *
 * For k = 8 the whole input row fits in four registers (r0-r3, x + offset in SXTB16 order), so
 * each channel is one LDM of its stream entry {4 weight words (doubled), 2 bias, M, K, e}, four
 * SMLADs and the requantization. Channels two at a time until an exponent word with bit 31; then
 * the next position (y += yskip). */
#define SOLO_CH(REQ)                                      \
    "ldmia r12!, {r4, r5, r6, r7, r8, r9, r10, r11}\n\t" \
    "smlad r8, r0, r4, r8\n\t"                        \
    "smlad r8, r1, r5, r8\n\t"                        \
    "smlad r8, r2, r6, r8\n\t"                        \
    "smlad r8, r3, r7, r8\n\t"                        \
    REQ("r8", "r8", "r9", "r10", "r4")                \
    "asr r8, r8, r11\n\t"                             \
    "ssat r8, #8, r8\n\t"                             \
    "strb r8, [lr], #1\n\t"
#define SOLO8_FN(NAME, REQ)                                                          \
__attribute__((naked)) void NAME(const tb_gemm_solo_ctx *ctx)                        \
{                                                                                    \
    (void)ctx;                                                                       \
    /* frame: 0 x, 4 xend, 8 stream, 12 off2, 16 yskip */                            \
    __asm volatile(                                                                  \
        "push {r4-r11, lr}\n\t"                                                      \
        "sub sp, sp, #24\n\t"                                                        \
        "ldmia r0, {r1, r2, r3, r4, r5, r6}\n\t"  /* x xend ws y off2 yskip */       \
        "strd r1, r2, [sp, #0]\n\t"                                                  \
        "str r3, [sp, #8]\n\t"                                                       \
        "strd r5, r6, [sp, #12]\n\t"                                                 \
        "mov lr, r4\n\t"                                                             \
        "1:\n\t"                                                                     \
        "ldr r4, [sp, #0]\n\t"                                                       \
        "ldr r5, [r4], #4\n\t"                                                       \
        "ldr r6, [r4], #4\n\t"                                                       \
        "str r4, [sp, #0]\n\t"                                                       \
        "ldr r7, [sp, #12]\n\t"                                                      \
        "sxtab16 r0, r7, r5\n\t"                                                     \
        "sxtab16 r1, r7, r5, ror #8\n\t"                                             \
        "sxtab16 r2, r7, r6\n\t"                                                     \
        "sxtab16 r3, r7, r6, ror #8\n\t"                                             \
        "ldr r12, [sp, #8]\n\t"                                                      \
        "2:\n\t"                                                                     \
        SOLO_CH(REQ)                                                                 \
        SOLO_CH(REQ)                                                                 \
        "cmp r11, #0\n\t"                                                            \
        "bge 2b\n\t"                                                                 \
        "ldr r4, [sp, #16]\n\t"                                                      \
        "add lr, lr, r4\n\t"                                                         \
        "ldrd r4, r5, [sp, #0]\n\t"                                                  \
        "cmp r4, r5\n\t"                                                             \
        "bne 1b\n\t"                                                                 \
        "add sp, sp, #24\n\t"                                                        \
        "pop {r4-r11, pc}\n\t");                                                     \
}
SOLO8_FN(tb_dsp_gemm_solo8, TB_DSP_REQ_TFLITE)
SOLO8_FN(tb_dsp_gemm_solo8_single, TB_DSP_REQ_SINGLE)
#undef SOLO8_FN
#undef SOLO_CH

void tb_dsp_solo8_stream(const int8_t *w, int32_t c0, int32_t c1, const int32_t *bias,
                         const int32_t *mult, const int32_t *shift, int32_t output_offset,
                         int32_t *ws)
{
    for (int32_t c = c0; c < c1; c++, ws += 8) {
        for (int32_t j = 0; j < 2; j++) {
            const uint32_t v = tb_read32(w + 8 * c + 4 * j);
            const int32_t e = __sxtb16(v), o = tb_sxtb16_ror8(v);
            ws[2 * j] = (int32_t)__sadd16((uint32_t)e, (uint32_t)e);
            ws[2 * j + 1] = (int32_t)__sadd16((uint32_t)o, (uint32_t)o);
        }
        ws[4] = bias ? 2 * bias[c] : 0;
        ws[5] = mult[c];
        ws[6] = tb_dsp_rounding(-shift[c], output_offset);
        ws[7] = -shift[c];
    }
    ws[-1] = (int32_t)((uint32_t)ws[-1] | 0x80000000u);
}

/* ---------------------------------------------------------------- hexa: 6 positions x 1 channel
 *
 * As the quad, for six positions: per group of 4 inputs one LDR of weights, two SXTB16, three LDMs
 * of inputs (two positions each) and twelve SMLADs (24 MACs). Fourteen live registers leave none
 * for the end of the row: the loop compares with the frame (a freed input register).
 * Inputs: per group of 4, [p0 even, p0 odd, ..., p5 even, p5 odd] (12 words). */
#define HEXA_STEP                         \
    "ldr r11, [lr], #4\n\t"               \
    "sxtb16 r10, r11\n\t"                 \
    "sxtb16 r11, r11, ror #8\n\t"         \
    "ldmia r12!, {r6, r7, r8, r9}\n\t"    \
    "smlad r0, r6, r10, r0\n\t"           \
    "smlad r0, r7, r11, r0\n\t"           \
    "smlad r1, r8, r10, r1\n\t"           \
    "smlad r1, r9, r11, r1\n\t"           \
    "ldmia r12!, {r6, r7, r8, r9}\n\t"    \
    "smlad r2, r6, r10, r2\n\t"           \
    "smlad r2, r7, r11, r2\n\t"           \
    "smlad r3, r8, r10, r3\n\t"           \
    "smlad r3, r9, r11, r3\n\t"           \
    "ldmia r12!, {r6, r7, r8, r9}\n\t"    \
    "smlad r4, r6, r10, r4\n\t"           \
    "smlad r4, r7, r11, r4\n\t"           \
    "smlad r5, r8, r10, r5\n\t"           \
    "smlad r5, r9, r11, r5\n\t"
#define HEXA_OUT(REQ, A, DST)             \
    REQ(A, A, "r6", "r7", "r12")          \
    "asr " A ", " A ", r8\n\t"            \
    "ssat " A ", #8, " A "\n\t"           \
    "strb " A ", " DST "\n\t"
    /* frame: 0 xs, 4 xend, 8 y (p0), 12 oc, 16 2 oc, 20 y (p3), 24 rq cursor (-> M), 28 wend,
     * 32 bias of the channel */
#define HEXA_HEAD \
 \
        "push {r4-r11, lr}\n\t" \
        "sub sp, sp, #40\n\t" \
        "ldmia r0, {r1, r2, r3, r4, r5, r6, r7}\n\t" /* xs xend w wend rq y oc */ \
        "strd r1, r2, [sp, #0]\n\t" \
        "str r6, [sp, #8]\n\t" \
        "add r8, r7, r7\n\t" \
        "strd r7, r8, [sp, #12]\n\t" \
        "add r8, r8, r7\n\t" \
        "add r8, r8, r6\n\t" \
        "str r8, [sp, #20]\n\t" \
        "str r4, [sp, #28]\n\t" \
        "mov lr, r3\n\t" \
        "ldr r0, [r5], #4\n\t"                     /* first bias */ \
        "str r0, [sp, #32]\n\t" \
        "str r5, [sp, #24]\n\t" \
        "1:\n\t" \
        "ldr r12, [sp, #0]\n\t" \
        "ldr r5, [sp, #32]\n\t" \
        "ldr r11, [lr], #4\n\t" \
        "sxtb16 r10, r11\n\t" \
        "sxtb16 r11, r11, ror #8\n\t" \
        "ldmia r12!, {r6, r7, r8, r9}\n\t" \
        "smlad r0, r6, r10, r5\n\t" \
        "smlad r0, r7, r11, r0\n\t" \
        "smlad r1, r8, r10, r5\n\t" \
        "smlad r1, r9, r11, r1\n\t" \
        "ldmia r12!, {r6, r7, r8, r9}\n\t" \
        "smlad r2, r6, r10, r5\n\t" \
        "smlad r2, r7, r11, r2\n\t" \
        "smlad r3, r8, r10, r5\n\t" \
        "smlad r3, r9, r11, r3\n\t" \
        "ldmia r12!, {r6, r7, r8, r9}\n\t" \
        "smlad r4, r6, r10, r5\n\t" \
        "smlad r4, r7, r11, r4\n\t" \
        "smlad r5, r8, r10, r5\n\t" \
        "smlad r5, r9, r11, r5\n\t"
#define HEXA_TAIL(REQ) \
 \
        "3:\n\t" \
        "ldr r9, [sp, #24]\n\t"                    /* -> M of this channel */ \
        "ldmia r9!, {r6, r7, r8, r10}\n\t"        /* M K e, bias of the next channel */ \
        "str r9, [sp, #24]\n\t" \
        "str r10, [sp, #32]\n\t" \
        "ldr r9, [sp, #8]\n\t"                     /* y p0 */ \
        "ldrd r10, r11, [sp, #12]\n\t"             /* oc, 2 oc */ \
        HEXA_OUT(REQ, "r2", "[r9, r11]") \
        HEXA_OUT(REQ, "r1", "[r9, r10]") \
        HEXA_OUT(REQ, "r0", "[r9], #1") \
        "str r9, [sp, #8]\n\t" \
        "ldr r9, [sp, #20]\n\t"                    /* y p3 */ \
        HEXA_OUT(REQ, "r5", "[r9, r11]") \
        HEXA_OUT(REQ, "r4", "[r9, r10]") \
        HEXA_OUT(REQ, "r3", "[r9], #1") \
        "str r9, [sp, #20]\n\t" \
        "ldr r0, [sp, #28]\n\t" \
        "cmp lr, r0\n\t" \
        "bne 1b\n\t" \
        "add sp, sp, #40\n\t" \
        "pop {r4-r11, pc}\n\t"

/* k / 4 groups, even: the first two, then two at a time */
#define HEXA_FN(NAME, REQ)                                                           \
__attribute__((naked)) void NAME(const tb_gemm_quad_ctx *ctx)                        \
{                                                                                    \
    (void)ctx;                                                                       \
    __asm volatile(HEXA_HEAD                                                         \
        HEXA_STEP                                                                    \
        "ldr r6, [sp, #4]\n\t"                                                       \
        "cmp r12, r6\n\t"                                                            \
        "beq 3f\n\t"                                                                 \
        "2:\n\t"                                                                     \
        HEXA_STEP                                                                    \
        HEXA_STEP                                                                    \
        "ldr r6, [sp, #4]\n\t"                                                       \
        "cmp r12, r6\n\t"                                                            \
        "bne 2b\n\t"                                                                 \
        HEXA_TAIL(REQ));                                                             \
}
HEXA_FN(tb_dsp_gemm_hexa, TB_DSP_REQ_TFLITE)
HEXA_FN(tb_dsp_gemm_hexa_single, TB_DSP_REQ_SINGLE)
#undef HEXA_FN

/* k / 4 groups, a multiple of 4 (k a multiple of 16): the first four, then four at a time */
#define HEXA4_FN(NAME, REQ)                                                          \
__attribute__((naked)) void NAME(const tb_gemm_quad_ctx *ctx)                        \
{                                                                                    \
    (void)ctx;                                                                       \
    __asm volatile(HEXA_HEAD                                                         \
        HEXA_STEP HEXA_STEP HEXA_STEP                                                \
        "ldr r6, [sp, #4]\n\t"                                                       \
        "cmp r12, r6\n\t"                                                            \
        "beq 3f\n\t"                                                                 \
        "2:\n\t"                                                                     \
        HEXA_STEP HEXA_STEP HEXA_STEP HEXA_STEP                                      \
        "ldr r6, [sp, #4]\n\t"                                                       \
        "cmp r12, r6\n\t"                                                            \
        "bne 2b\n\t"                                                                 \
        HEXA_TAIL(REQ));                                                             \
}
HEXA4_FN(tb_dsp_gemm_hexa4, TB_DSP_REQ_TFLITE)
HEXA4_FN(tb_dsp_gemm_hexa4_single, TB_DSP_REQ_SINGLE)
#undef HEXA4_FN
#undef HEXA_STEP
#undef HEXA_OUT
#undef HEXA_HEAD
#undef HEXA_TAIL

/* Six consecutive positions' rows of k int8 (k a multiple of 8) into the hexa buffer, doubled:
 * group j of position p at xs[12j + 2p] (even bytes), xs[12j + 2p + 1] (odd bytes). */
__attribute__((naked)) void tb_dsp_hexa_expand6(const int8_t *x, int32_t k, int32_t off2,
                                                int32_t *xs)
{
    (void)x, (void)k, (void)off2, (void)xs;
    __asm volatile(
        "push {r4-r10, lr}\n\t"
        "mov r10, r3\n\t"
        "mov lr, #6\n\t"
        "1:\n\t"
        "add r9, r0, r1\n\t"
        "2:\n\t"
        "ldr r4, [r0], #4\n\t"
        "ldr r5, [r0], #4\n\t"
        "sxtab16 r6, r2, r4\n\t"
        "sxtab16 r7, r2, r4, ror #8\n\t"
        "sxtab16 r8, r2, r5\n\t"
        "sxtab16 r12, r2, r5, ror #8\n\t"
        "sxtab16 r6, r6, r4\n\t"
        "sxtab16 r7, r7, r4, ror #8\n\t"
        "sxtab16 r8, r8, r5\n\t"
        "sxtab16 r12, r12, r5, ror #8\n\t"
        "strd r8, r12, [r3, #48]\n\t"
        "strd r6, r7, [r3], #96\n\t"
        "cmp r0, r9\n\t"
        "bne 2b\n\t"
        "add r10, r10, #8\n\t"
        "mov r3, r10\n\t"
        "subs lr, lr, #1\n\t"
        "bne 1b\n\t"
        "pop {r4-r10, pc}\n\t");
}

/* Four consecutive positions' rows of k int8 (k a multiple of 8) into the quad buffer, doubled:
 * 2 (x + offset) = (x + 2 offset) + x, with 2 offset in both halfwords of off2; group j of
 * position p at xs[8j + 2p] (even bytes), xs[8j + 2p + 1] (odd bytes). */
__attribute__((naked)) void tb_dsp_quad_expand4(const int8_t *x, int32_t k, int32_t off2,
                                                int32_t *xs)
{
    (void)x, (void)k, (void)off2, (void)xs;
    __asm volatile(
        "push {r4-r10, lr}\n\t"
        "mov r10, r3\n\t"
        "mov lr, #4\n\t"
        "1:\n\t"
        "add r9, r0, r1\n\t"
        "2:\n\t"
        "ldr r4, [r0], #4\n\t"
        "ldr r5, [r0], #4\n\t"
        "sxtab16 r6, r2, r4\n\t"
        "sxtab16 r7, r2, r4, ror #8\n\t"
        "sxtab16 r8, r2, r5\n\t"
        "sxtab16 r12, r2, r5, ror #8\n\t"
        "sxtab16 r6, r6, r4\n\t"
        "sxtab16 r7, r7, r4, ror #8\n\t"
        "sxtab16 r8, r8, r5\n\t"
        "sxtab16 r12, r12, r5, ror #8\n\t"
        "strd r8, r12, [r3, #32]\n\t"
        "strd r6, r7, [r3], #64\n\t"
        "cmp r0, r9\n\t"
        "bne 2b\n\t"
        "add r10, r10, #8\n\t"
        "mov r3, r10\n\t"
        "subs lr, lr, #1\n\t"
        "bne 1b\n\t"
        "pop {r4-r10, pc}\n\t");
}

/* ---------------------------------------------------------------- expansion (C) */

/* 4 bytes of a row of k, zero past its end */
static uint32_t row_word(const int8_t *row, int32_t j, int32_t k, uint8_t pad)
{
    if (4 * j + 4 <= k) return tb_read32(row + 4 * j);
    uint32_t v = 0;
    for (int32_t i = 0; i < 4; i++)
        v |= (uint32_t)(4 * j + i < k ? (uint8_t)row[4 * j + i] : pad) << (8 * i);
    return v;
}

void tb_dsp_gemm_weights(const int8_t *w, int32_t k, int32_t c0, int32_t c1, const int32_t *bias,
                         const int32_t *mult, const int32_t *shift, int32_t output_offset,
                         int32_t *ws)
{
    const int32_t k4 = tb_gemm_k4(k), np = k4 / 2, dw = tb_gemm_duo_words(k4);
    const int32_t nd = (c1 - c0 + 1) / 2;
    for (int32_t d = 0; d < nd; d++) {
        int32_t *s = ws + d * dw;
        for (int32_t i = 0; i < 2; i++) {
            const int32_t c = c0 + 2 * d + i;
            int32_t *cst = s + 2 + 2 * np + 3 * i;
            if (c >= c1) {
                s[i] = 0;
                for (int32_t q = 0; q < np; q++) s[2 + 2 * q + i] = 0;
                cst[0] = 0, cst[1] = 0, cst[2] = 1;
                continue;
            }
            s[i] = bias ? 2 * bias[c] : 0;
            const int8_t *row = w + c * k;
            for (int32_t j = 0; j < k4 / 4; j++) {
                /* weights doubled: the accumulator is 2 * acc, as the requantization wants */
                const uint32_t v = row_word(row, j, k, 0);
                const int32_t e = __sxtb16(v), o = tb_sxtb16_ror8(v);
                s[2 + 2 * (2 * j) + i] = (int32_t)__sadd16((uint32_t)e, (uint32_t)e);
                s[2 + 2 * (2 * j + 1) + i] = (int32_t)__sadd16((uint32_t)o, (uint32_t)o);
            }
            cst[0] = mult[c];
            cst[1] = tb_dsp_rounding(-shift[c], output_offset);
            cst[2] = -shift[c];
        }
        /* ends a run: the last full duo and a partial one (tb_dsp_gemm_run) */
        if (d == nd - 1 || (d == nd - 2 && (c1 - c0) % 2 == 1))
            s[2 + 2 * np + 5] = (int32_t)((uint32_t)s[2 + 2 * np + 5] | 0x80000000u);
    }
}

void tb_dsp_gemm_expand(const int8_t *x, int32_t k, int32_t offset, int32_t p, int32_t *xs)
{
    const int32_t k4 = tb_gemm_k4(k);
    const int32_t off2 = (int32_t)(((uint32_t)offset & 0xFFFFu) | ((uint32_t)offset << 16));
    const uint8_t pad = (uint8_t)(-offset);
    int32_t *d = xs + p;
    int32_t j = 0;
    for (; 4 * j + 4 <= k; j++, d += 6) {
        const uint32_t v = tb_read32(x + 4 * j);
        d[0] = __sxtab16(off2, v);
        d[3] = tb_sxtab16_ror8(off2, v);
    }
    for (; 4 * j < k4; j++, d += 6) {
        const uint32_t v = row_word(x, j, k, pad);
        d[0] = __sxtab16(off2, v);
        d[3] = tb_sxtab16_ror8(off2, v);
    }
}

void tb_dsp_gemm_zero(int32_t k, int32_t p, int32_t *xs)
{
    const int32_t k4 = tb_gemm_k4(k);
    for (int32_t q = 0; q < k4 / 2; q++) xs[3 * q + p] = 0;
}

void tb_dsp_gemm_run(const int32_t *xs, int32_t k, const int32_t *ws, int32_t n, int8_t *y0,
                     int8_t *y1, int8_t *y2, void (*trio)(const tb_gemm_ctx *))
{
    const int32_t k4 = tb_gemm_k4(k), dw = tb_gemm_duo_words(k4);
    const int32_t full = n / 2;
    int8_t spill[2 * TB_GEMM_BLOCK + 8];
    tb_gemm_ctx ctx;
    ctx.xs = xs;
    ctx.entry = tb_gemm_trio_entry(k);
    /* a missing position's outputs go to spill */
    ctx.oc = (int32_t)((uintptr_t)(y1 ? y1 : spill) - (uintptr_t)y0);
    ctx.oc2 = (int32_t)((uintptr_t)(y2 ? y2 : spill + TB_GEMM_BLOCK) - (uintptr_t)y0);
    if (full) {
        ctx.ws = ws;
        ctx.y = y0;
        trio(&ctx);
    }
    if (n & 1) {
        int8_t last[8];
        ctx.ws = ws + full * dw;
        ctx.y = last;
        ctx.oc = 2;
        ctx.oc2 = 4;
        trio(&ctx);
        y0[n - 1] = last[0];
        if (y1) y1[n - 1] = last[2];
        if (y2) y2[n - 1] = last[4];
    }
}

void tb_dsp_quad_constants(int32_t c0, int32_t c1, const int32_t *bias, const int32_t *mult,
                           const int32_t *shift, int32_t output_offset, int32_t *rq)
{
    for (int32_t c = c0; c < c1; c++, rq += 4) {
        rq[0] = bias ? 2 * bias[c] : 0;
        rq[1] = mult[c];
        rq[2] = tb_dsp_rounding(-shift[c], output_offset);
        rq[3] = -shift[c];
    }
    rq[0] = 0; /* read ahead by the last channel */
}

void tb_dsp_quad_expand(const int8_t *x, int32_t k, int32_t offset, int32_t p, int32_t *xs)
{
    /* 2 (x + offset) = (x + 2 offset) + x */
    const uint32_t off2 = ((uint32_t)(2 * offset) & 0xFFFFu) | ((uint32_t)(2 * offset) << 16);
    int32_t *d = xs + 2 * p;
    for (int32_t j = 0; j < k / 4; j++, d += 8) {
        const uint32_t v = tb_read32(x + 4 * j);
        d[0] = __sxtab16(__sxtab16((int32_t)off2, v), v);
        d[1] = tb_sxtab16_ror8(tb_sxtab16_ror8((int32_t)off2, v), v);
    }
}

void tb_dsp_quad_zero(int32_t k, int32_t p, int32_t *xs)
{
    int32_t *d = xs + 2 * p;
    for (int32_t j = 0; j < k / 4; j++, d += 8) d[0] = d[1] = 0;
}

const tb_gemm_routines *tb_gemm_routines_for(int32_t rounding)
{
    static const tb_gemm_routines tflite = {tb_dsp_gemm_trio_run, tb_dsp_gemm_quad, tb_dsp_gemm_hexa,
                                            tb_dsp_gemm_hexa4, tb_dsp_gemm_solo8};
    static const tb_gemm_routines single = {tb_dsp_gemm_trio_run_single, tb_dsp_gemm_quad_single,
                                            tb_dsp_gemm_hexa_single, tb_dsp_gemm_hexa4_single,
                                            tb_dsp_gemm_solo8_single};
    return rounding == TB_ROUND_SINGLE ? &single : &tflite;
}

void tb_dsp_clamp_s8(int8_t *y, int32_t n, int32_t lo, int32_t hi)
{
    for (int32_t i = 0; i < n; i++) y[i] = (int8_t)(y[i] < lo ? lo : (y[i] > hi ? hi : y[i]));
}

/* ---------------------------------------------------------------- zeros (tb_dsp.h) */

__attribute__((naked)) void tb_dsp_zero(int32_t *p, int32_t n)
{
    (void)p, (void)n;
    __asm volatile(
        "push {r4-r9}\n\t"
        "movs r2, #0\n\t"
        "movs r3, #0\n\t"
        "movs r4, #0\n\t"
        "movs r5, #0\n\t"
        "movs r6, #0\n\t"
        "movs r7, #0\n\t"
        "movs r8, #0\n\t"
        "movs r9, #0\n\t"
        "b 2f\n\t"
        "1:\n\t"
        "stmia r0!, {r2, r3, r4, r5, r6, r7, r8, r9}\n\t"
        "2:\n\t"
        "subs r1, r1, #8\n\t"
        "bge 1b\n\t"
        "adds r1, r1, #8\n\t"
        "beq 4f\n\t"
        "3:\n\t"
        "str r2, [r0], #4\n\t"
        "subs r1, r1, #1\n\t"
        "bne 3b\n\t"
        "4:\n\t"
        "pop {r4-r9}\n\t"
        "bx lr\n\t");
}

__attribute__((naked)) void tb_dsp_zero4(int32_t *p, int32_t gs, int32_t n)
{
    (void)p, (void)gs, (void)n;
    __asm volatile(
        "push {r4-r7}\n\t"
        "movs r4, #0\n\t"
        "add r5, r0, r1\n\t"
        "add r6, r5, r1\n\t"
        "add r7, r6, r1\n\t"
        "1:\n\t"
        "str r4, [r0], #4\n\t"
        "str r4, [r5], #4\n\t"
        "str r4, [r6], #4\n\t"
        "str r4, [r7], #4\n\t"
        "subs r2, r2, #1\n\t"
        "bne 1b\n\t"
        "pop {r4-r7}\n\t"
        "bx lr\n\t");
}

int tb_dsp_fill_stand_ins(const int32_t *bias, const int32_t *shift, int32_t n, int32_t fan_in,
                          tb_dsp_stand_ins *s)
{
    if (n > TB_DSP_MAX_STAND_INS || !tb_dsp_bias_ok(NULL, 0, fan_in)) return 0;
    for (int32_t c = 0; c < n; c++) {
        const int ok = tb_dsp_channel_ok(bias, shift, c, fan_in);
        s->bias[c] = ok && bias ? bias[c] : 0;
        s->shift[c] = ok ? shift[c] : -1;
    }
    return 1;
}

static int constant_output(const tb_conv_params *p, int64_t acc, int32_t mult, int32_t shift,
                           int32_t *out)
{
    const int64_t shifted = shift > 0 ? acc * ((int64_t)1 << (shift > 31 ? 31 : shift)) : acc;
    if (shifted < INT32_MIN || shifted > INT32_MAX) return 0;
    *out = tb_clamp_i32(tb_requantize_as(p->rounding, (int32_t)acc, mult, shift) + p->output_offset,
                        p->act_min, p->act_max);
    return 1;
}

int tb_dsp_constant_channel(const tb_conv_params *p, const int8_t *w, int32_t n, int32_t stride,
                            int32_t bias, int32_t mult, int32_t shift, int8_t *y, int32_t n_pos,
                            int32_t y_stride)
{
    const int32_t lo = -128 + p->input_offset, hi = 127 + p->input_offset;
    int64_t least = bias, greatest = bias;
    for (int32_t i = 0; i < n; i++) {
        const int32_t a = w[i * stride] * lo, b = w[i * stride] * hi; /* padding: 0 */
        least += a < b ? (a < 0 ? a : 0) : (b < 0 ? b : 0);
        greatest += a > b ? (a > 0 ? a : 0) : (b > 0 ? b : 0);
    }
    int32_t first, last;
    if (!constant_output(p, least, mult, shift, &first) ||
        !constant_output(p, greatest, mult, shift, &last) || first != last)
        return 0;
    for (int32_t q = 0; q < n_pos; q++) y[q * y_stride] = (int8_t)first;
    return 1;
}

#else
typedef int tb_dsp_gemm_unused; /* an empty translation unit is not ISO C */
#endif
