/* ARMv7E-M DSP helpers for the kernels' DSP paths. Internal header.
 *
 * TB_DSP is 1 when the DSP path is compiled: the target has the DSP extension
 * (__ARM_FEATURE_DSP: SMLAD, SXTB16, SSAT...) and TB_NO_DSP is not defined (the kernel benchmark
 * builds a plain-C copy of every kernel with TB_NO_DSP to check the DSP path against it).
 * Everything below the #if is only for DSP paths; plain-C paths never include more than TB_DSP.
 *
 * Exact requantization (docs/kernels.md, "Optimized kernels"): TFLite's
 *   y = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc, M), e) + out_off
 * with e = -shift >= 1 equals, for |acc| < 2^29,
 *   y = (SMMLAR(2 * acc, M, K) + (acc < 0 ? -1 : 0)) >> e,   K = 2^(e-1) + out_off * 2^e
 * because SRDHM(acc, M) = floor((2 acc M + 2^31) / 2^32) (its sign-dependent nudge gives the same
 * floor for both signs), RoundingDivideByPOT(v, e) = floor((v + 2^(e-1) - [v < 0]) / 2^e), and
 * v < 0 only if acc < 0, while acc < 0 with v = 0 rounds to the same result either way. Adding
 * out_off * 2^e before the floor shift is exact. Kernels use it only after tb_dsp_requant_ok().
 *
 * Single rounding (TB_ROUND_SINGLE), y = floor((acc M + 2^(30+e)) / 2^(31+e)) + out_off, is
 *   y = SMMLA(2 * acc, M, K) >> e   with the same K,
 * since 2 acc M + K 2^32 = 2 (acc M + 2^(30+e) + out_off 2^(31+e)) and SMMLA floors the high word:
 * one instruction less than the double rounding (no nudge, no sign correction). */
#ifndef TB_DSP_H
#define TB_DSP_H
#include <stdint.h>
#include <string.h>

#include "tb_kernels.h"

#if defined(__ARM_FEATURE_DSP) && !defined(TB_NO_DSP)
#define TB_DSP 1
#else
#define TB_DSP 0
#endif

#if TB_DSP
#include <arm_acle.h>

#define TB_INLINE static inline __attribute__((always_inline))

/* 4 bytes from or to any address (the M7 allows unaligned LDR and STR; memcpy keeps C aliasing
 * rules). */
TB_INLINE uint32_t tb_read32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

TB_INLINE void tb_write32(void *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

/* SXTB16 / SXTAB16 of the odd bytes: GCC 12 does not fold a rotate into them, so spell it. */
TB_INLINE int32_t tb_sxtb16_ror8(uint32_t x)
{
    int32_t r;
    __asm("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

TB_INLINE int32_t tb_sxtab16_ror8(int32_t a, uint32_t x)
{
    int32_t r;
    __asm("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
}

/* (a * b + 2^31) >> 32, plus c: SMMLAR (no ACLE intrinsic). */
TB_INLINE int32_t tb_smmlar(int32_t a, int32_t b, int32_t c)
{
    int32_t r;
    __asm("smmlar %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

/* (a * b + 2^31) >> 32: SMMULR (no ACLE intrinsic). */
TB_INLINE int32_t tb_smmulr(int32_t a, int32_t b)
{
    int32_t r;
    __asm("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/* Bottom and top signed halfword products (SMULBB, SMULTT: GCC 12's ACLE lacks them). */
TB_INLINE int32_t tb_smulbb(int32_t a, int32_t b)
{
    int32_t r;
    __asm("smulbb %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

TB_INLINE int32_t tb_smultt(int32_t a, int32_t b)
{
    int32_t r;
    __asm("smultt %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/* (a * b) >> 32, plus c: SMMLA (no ACLE intrinsic). */
TB_INLINE int32_t tb_smmla(int32_t a, int32_t b, int32_t c)
{
    int32_t r;
    __asm("smmla %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

/* [lo half of a, lo half of b] and [hi half of a, hi half of b] (PKHBT / PKHTB). */
TB_INLINE uint32_t tb_pack_lo(uint32_t a, uint32_t b)
{
    uint32_t r;
    __asm("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

TB_INLINE uint32_t tb_pack_hi(uint32_t a, uint32_t b)
{
    uint32_t r;
    __asm("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(b), "r"(a));
    return r;
}

/* The fast form is exact when every e is in [1, 22] (so K and the sum fit) and
 * |bias| + max |sum of fan_in products| < 2^29 (each product |w (x + off)| <= 128 * 255). */
static inline int tb_dsp_shift_ok(const int32_t *shift, int32_t n)
{
    for (int32_t c = 0; c < n; c++)
        if (shift[c] > -1 || shift[c] < -22) return 0;
    return 1;
}

static inline int tb_dsp_bias_ok(const int32_t *bias, int32_t n, int32_t fan_in)
{
    if (fan_in <= 0 || fan_in > (1 << 29) / (128 * 255)) return 0;
    const int32_t limit = (1 << 29) - fan_in * 128 * 255;
    if (bias)
        for (int32_t c = 0; c < n; c++)
            if (bias[c] >= limit || bias[c] <= -limit) return 0;
    return 1;
}

static inline int tb_dsp_requant_ok(const int32_t *bias, const int32_t *shift, int32_t n,
                                    int32_t fan_in)
{
    return tb_dsp_shift_ok(shift, n) && tb_dsp_bias_ok(bias, n, fan_in);
}

/* Real models have a few channels outside those limits (dead channels: all-zero or tiny weights,
 * weight scale ~1e-9, shift -29, bias near -2^31), and one of them used to send a whole layer down
 * the plain path. Instead the DSP path runs over every channel with stand-ins for those (bias 0,
 * shift -1: harmless values) and the kernel recomputes them by its plain path. */
#define TB_DSP_MAX_STAND_INS 1024 /* channels of one call (8 KB of stack while it runs) */

typedef struct {
    int32_t bias[TB_DSP_MAX_STAND_INS], shift[TB_DSP_MAX_STAND_INS];
} tb_dsp_stand_ins;

static inline int tb_dsp_channel_ok(const int32_t *bias, const int32_t *shift, int32_t c,
                                    int32_t fan_in)
{
    return tb_dsp_requant_ok(bias ? bias + c : NULL, shift + c, 1, fan_in);
}

/* s = bias and shift of n channels with the stand-ins; 0 when stand-ins cannot help (more than
 * TB_DSP_MAX_STAND_INS channels, or a fan_in past the limit for every channel). In tb_dsp_gemm.c. */
int tb_dsp_fill_stand_ins(const int32_t *bias, const int32_t *shift, int32_t n, int32_t fan_in,
                          tb_dsp_stand_ins *s);

/* Such a channel usually cannot vary: requantization is monotonic in the sum, so when the least
 * and the greatest sum its n weights (at w, w + stride, ...) can make over every input value and
 * padding requantize to one output, every output is that one. Then it is written at y, y +
 * y_stride, ... (n_pos outputs) and the answer is 1, else 0 (the plain path recomputes the
 * channel). Exact: the plain path's sums lie between those two, so it overflows nowhere then. */
int tb_dsp_constant_channel(const tb_conv_params *p, const int8_t *w, int32_t n, int32_t stride,
                            int32_t bias, int32_t mult, int32_t shift, int8_t *y, int32_t n_pos,
                            int32_t y_stride);

/* K = 2^(e-1) + out_off * 2^e for e = -shift in [1, 22] */
TB_INLINE int32_t tb_dsp_rounding(int32_t e, int32_t out_off)
{
    return (int32_t)((uint32_t)(2 * out_off + 1) << e) >> 1;
}

/* acc2 = 2 * acc; result before the output range clamp, saturated to int8 */
TB_INLINE int32_t tb_dsp_requant(int32_t acc2, int32_t mult, int32_t round, int32_t e)
{
    int32_t t = tb_smmlar(acc2, mult, round) + (acc2 >> 31);
    return __ssat(t >> e, 8);
}

/* the same, rounded once (TB_ROUND_SINGLE) */
TB_INLINE int32_t tb_dsp_requant_single(int32_t acc2, int32_t mult, int32_t round, int32_t e)
{
    return __ssat(tb_smmla(acc2, mult, round) >> e, 8);
}

/* The requantization step of the assembly paths, as text for their asm strings (register names):
 * D = the rounded high word of accumulator A (= 2 acc) times M plus K << 32, before the ASR by e
 * and SSAT; T a scratch register. TB_DSP_REQ_TFLITE: TFLite's double rounding (the sign into T,
 * SMMLAR); TB_DSP_REQ_SINGLE: the single rounding (SMMLA, T unused). Each assembly routine exists
 * once per rounding (the suffix _single), generated from one text. */
#define TB_DSP_REQ_TFLITE(D, A, M, K, T) \
    "add " T ", " K ", " A ", asr #31\n\t" "smmlar " D ", " A ", " M ", " T "\n\t"
#define TB_DSP_REQ_SINGLE(D, A, M, K, T) "smmla " D ", " A ", " M ", " K "\n\t"

/* n >= 0 words of zeros at p (word aligned), eight per STM; n >= 1 words of zeros at each of p,
 * p + gs, p + 2 gs, p + 3 gs (gs in bytes). Assembly in tb_dsp_gemm.c: GCC turns the C loops
 * into memset calls behind alias checks. */
void tb_dsp_zero(int32_t *p, int32_t n);
void tb_dsp_zero4(int32_t *p, int32_t gs, int32_t n);

/* A row of n positions of four channels (stride ch bytes) into 2n words [c0 c2] [c1 c3], each
 * value plus the offset pair off2 (assembly: LDR, two SXTAB16, STRD a position, two a loop);
 * the depthwise kernels' input expansion (depthwise_conv2d_s8.c). */
void tb_dsp_expand_quads(const int8_t *src, int32_t n, int32_t ch, int32_t off2, int32_t *dst);

/* One step of the 3x2 SMLAD tile both int8 GEMM cores use (tb_dsp_gemm.c, tb_dsp_grad.c), as
 * inline-assembly text: three int16-pair words of one operand from r11 (post-incremented), two of
 * the other from r12 (LDRD), six SMLADs into the accumulators r0-r5 (12 MACs). */
#define TB_DSP_SMLAD_3X2_STEP            \
    "ldmia r11!, {r6, r7, r8}\n\t"       \
    "ldrd r9, r10, [r12], #8\n\t"        \
    "smlad r0, r6, r9, r0\n\t"           \
    "smlad r1, r7, r9, r1\n\t"           \
    "smlad r2, r8, r9, r2\n\t"           \
    "smlad r3, r6, r10, r3\n\t"          \
    "smlad r4, r7, r10, r4\n\t"          \
    "smlad r5, r8, r10, r5\n\t"

#endif /* TB_DSP */
#endif
