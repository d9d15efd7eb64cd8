/* Gradient tensors: clamp masks, int32 -> int8 requantization with a per-tensor power-of-two
 * exponent, the sum at a fork, and the per-channel weight scale applied before an input gradient. */
#include "tb_train.h"
#include "tb_grad.h"
#include "tb_requant.h"
#include "tb_dsp.h"

#if TB_DSP
/* DSP path, eight outputs a mask byte: act_min < y < act_max is the unsigned byte test
 * (y - act_min - 1) mod 256 < R with R = act_max - act_min - 1 in [1, 254] (a y below the range
 * wraps to at least 127 - act_min > R - 1, one above stays below 256), so per four bytes USUB8
 * twice and SEL give the bits as bytes 0/1, and one multiply gathers them: bit j of byte j lands
 * at bit 24 + j of b * 0x01020408 (at 28 + j of b * 0x10204080), every other product bit below 24
 * and at a different place, so the two products add without carries. Assembly (GCC turns the
 * multiplies into shifts and adds):
 *   for each mask byte: lo = SEL(GE of USUB8(USUB8(word, below), range), 0, 0x01010101) of y[0..3],
 *   hi the same of y[4..7]; *mask++ = (hi * 0x10204080 + lo * 0x01020408) >> 24 */
__attribute__((naked)) static void clamp_mask_dsp(const int8_t *y, uint8_t *mask, uint8_t *mask_end,
                                                  uint32_t below, uint32_t range)
{
    (void)y, (void)mask, (void)mask_end, (void)below, (void)range;
    __asm volatile(
        "push {r4-r9, lr}\n\t"
        "ldr r4, [sp, #28]\n\t"             /* range */
        "movs r5, #0\n\t"
        "mov r6, #0x01010101\n\t"
        "movw r7, #0x0408\n\t"
        "movt r7, #0x0102\n\t"
        "movw r8, #0x4080\n\t"
        "movt r8, #0x1020\n\t"
        "1:\n\t"
        "ldr r9, [r0], #4\n\t"
        "usub8 r9, r9, r3\n\t"
        "usub8 r9, r9, r4\n\t"
        "sel r12, r5, r6\n\t"
        "ldr r9, [r0], #4\n\t"
        "usub8 r9, r9, r3\n\t"
        "usub8 r9, r9, r4\n\t"
        "sel r9, r5, r6\n\t"
        "mul r9, r9, r8\n\t"
        "mla r9, r12, r7, r9\n\t"
        "lsr r9, r9, #24\n\t"
        "strb r9, [r1], #1\n\t"
        "cmp r1, r2\n\t"
        "bne 1b\n\t"
        "pop {r4-r9, pc}\n\t");
}
#endif

void tb_clamp_mask_pack_s8(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max,
                           uint8_t *mask)
{
    int32_t done = 0;
#if TB_DSP
    if (n >= 8 && act_min >= -128 && act_max <= 127 && act_max - act_min >= 2) {
        done = n / 8 * 8;
        clamp_mask_dsp(y, mask, mask + n / 8, (uint32_t)(uint8_t)(act_min + 1) * 0x01010101u,
                       (uint32_t)(act_max - act_min - 1) * 0x01010101u);
    }
#endif
    for (int32_t i = done / 8; i < (n + 7) / 8; i++) mask[i] = 0;
    for (int32_t i = done; i < n; i++)
        if (y[i] > act_min && y[i] < act_max) mask[i >> 3] |= (uint8_t)(1u << (i & 7));
}

#if TB_DSP
/* Four mask bits as four bytes 0x00 / 0xFF (LSB first), ANDed with four gradient bytes. */
static const uint32_t tb_mask_nibble_bytes[16] = {
    0x00000000u, 0x000000FFu, 0x0000FF00u, 0x0000FFFFu, 0x00FF0000u, 0x00FF00FFu,
    0x00FFFF00u, 0x00FFFFFFu, 0xFF000000u, 0xFF0000FFu, 0xFF00FF00u, 0xFF00FFFFu,
    0xFFFF0000u, 0xFFFF00FFu, 0xFFFFFF00u, 0xFFFFFFFFu};
#endif

void tb_grad_apply_mask_s8(int8_t *g, const uint8_t *mask, int32_t n)
{
    int32_t i = 0;
#if TB_DSP
    /* eight bytes a mask byte, as two words */
    for (; i + 8 <= n; i += 8) {
        const uint32_t m = mask[i >> 3];
        tb_write32(g + i, tb_read32(g + i) & tb_mask_nibble_bytes[m & 15u]);
        tb_write32(g + i + 4, tb_read32(g + i + 4) & tb_mask_nibble_bytes[m >> 4]);
    }
#endif
    for (; i < n; i++)
        if (!((mask[i >> 3] >> (i & 7)) & 1u)) g[i] = 0;
}

#if TB_DSP
/* Eight sums a mask byte (assembly): LDM eight words, each ANDed with its bit sign-extended
 * (SBFX: 0 or -1), STM back. acc is word aligned (int32_t). */
__attribute__((naked)) static void apply_mask_s32_dsp(int32_t *acc, const uint8_t *mask,
                                                      const uint8_t *mask_end)
{
    (void)acc, (void)mask, (void)mask_end;
#define MASK_WORD(R, BIT)                  \
    "sbfx r12, r3, #" BIT ", #1\n\t"      \
    "and " R ", " R ", r12\n\t"
    __asm volatile(
        "push {r4-r11}\n\t"
        "1:\n\t"
        "ldrb r3, [r1], #1\n\t"
        "ldmia r0, {r4-r11}\n\t"
        MASK_WORD("r4", "0") MASK_WORD("r5", "1") MASK_WORD("r6", "2") MASK_WORD("r7", "3")
        MASK_WORD("r8", "4") MASK_WORD("r9", "5") MASK_WORD("r10", "6") MASK_WORD("r11", "7")
        "stmia r0!, {r4-r11}\n\t"
        "cmp r1, r2\n\t"
        "bne 1b\n\t"
        "pop {r4-r11}\n\t"
        "bx lr\n\t");
#undef MASK_WORD
}
#endif

void tb_grad_apply_mask_s32(int32_t *acc, const uint8_t *mask, int32_t n)
{
    int32_t i = 0;
#if TB_DSP
    if (n >= 8) {
        i = n / 8 * 8;
        apply_mask_s32_dsp(acc, mask, mask + n / 8);
    }
#endif
    for (; i < n; i++)
        if (!((mask[i >> 3] >> (i & 7)) & 1u)) acc[i] = 0;
}

#if TB_DSP
/* The OR of |acc[i]| up to end, eight a loop (assembly): LDM, then EOR and SUB with the sign
 * (|v|, 2^31 for INT32_MIN) and ORR. Its bit length is the largest magnitude's. */
__attribute__((naked)) static uint32_t or_abs_dsp(const int32_t *acc, const int32_t *end)
{
    (void)acc, (void)end;
#define OR_ABS(R)                         \
    "eor r12, " R ", " R ", asr #31\n\t" \
    "sub r12, r12, " R ", asr #31\n\t"   \
    "orr r3, r3, r12\n\t"
    __asm volatile(
        "push {r4-r11}\n\t"
        "movs r3, #0\n\t"
        "1:\n\t"
        "ldmia r0!, {r4-r11}\n\t"
        OR_ABS("r4") OR_ABS("r5") OR_ABS("r6") OR_ABS("r7")
        OR_ABS("r8") OR_ABS("r9") OR_ABS("r10") OR_ABS("r11")
        "cmp r0, r1\n\t"
        "bne 1b\n\t"
        "mov r0, r3\n\t"
        "pop {r4-r11}\n\t"
        "bx lr\n\t");
#undef OR_ABS
}

/* out[i] = tb_grad_round_s8(acc[i], s) up to end for s in [2, 24] and |acc[i]| < 2^(s + 7), four a
 * loop (assembly). Rounding half away from zero is floor((v - [v < 0] + 2^(s-1)) / 2^s), which
 * SMMULR by 2^(32 - s) computes from v - [v < 0] (ADD with the sign); the result lies in
 * [-128, 128], SSAT takes it to [-128, 127], and two saturating negations of the packed word (QSUB8
 * from 0) take -128 to -127: sign(v) min(127, (|v| + 2^(s-1)) >> s). out may alias acc: four
 * bytes are written after the four words that hold them were read. */
__attribute__((naked)) static void round_dsp(const int32_t *acc, const int32_t *end, int8_t *out,
                                             int32_t mult)
{
    (void)acc, (void)end, (void)out, (void)mult;
#define ROUND(R)                          \
    "add " R ", " R ", " R ", asr #31\n\t" \
    "smmulr " R ", " R ", r3\n\t"         \
    "ssat " R ", #8, " R "\n\t"
    __asm volatile(
        "push {r4-r8}\n\t"
        "movs r8, #0\n\t"
        "1:\n\t"
        "ldmia r0!, {r4-r7}\n\t"
        ROUND("r4") ROUND("r5") ROUND("r6") ROUND("r7")
        "bfi r4, r5, #8, #8\n\t"
        "bfi r4, r6, #16, #8\n\t"
        "bfi r4, r7, #24, #8\n\t"
        "qsub8 r4, r8, r4\n\t"
        "qsub8 r4, r8, r4\n\t"
        "str r4, [r2], #4\n\t"
        "cmp r0, r1\n\t"
        "bne 1b\n\t"
        "pop {r4-r8}\n\t"
        "bx lr\n\t");
#undef ROUND
}
#endif

int32_t tb_grad_requantize_s32_s8(const int32_t *acc, int32_t n, int32_t acc_exp, int8_t *out)
{
    /* a value of the largest magnitude's bit length (all the exponent rule needs) */
    uint32_t largest = 0;
    int32_t i = 0;
#if TB_DSP
    if (n >= 8) {
        i = n / 8 * 8;
        largest = or_abs_dsp(acc, acc + i);
    }
#endif
    for (; i < n; i++) {
        const uint32_t a = tb_abs_u32(acc[i]);
        if (a > largest) largest = a;
    }
    const int32_t shift = tb_grad_shift_for(largest);
    /* out[i] overwrites bytes of acc[0..i] only, which are already read */
    i = 0;
#if TB_DSP
    if (n >= 4 && shift >= 2 && largest < 0x80000000u) {
        i = n / 4 * 4;
        round_dsp(acc, acc + i, out, 1 << (32 - shift));
    }
#endif
    for (; i < n; i++) out[i] = tb_grad_round_s8(acc[i], shift);
    return acc_exp + shift;
}

/* v * 2^s: exact for s >= 0 (|v| <= 127, s <= 23), rounded half away from zero for s < 0. */
static int32_t tb_grad_align(int32_t v, int32_t s)
{
    if (s >= 0) return v * (1 << s);
    return s < -8 ? 0 : tb_grad_round_s8(v, -s);  /* |v| / 2^9 < 1/2 rounds to 0 */
}

static uint32_t tb_max_abs_s8(const int8_t *a, int32_t n)
{
    uint32_t m = 0;
    for (int32_t i = 0; i < n; i++) {
        const uint32_t v = tb_abs_u32(a[i]);
        if (v > m) m = v;
    }
    return m;
}

int32_t tb_grad_add_s8(const int8_t *a, int32_t a_exp, const int8_t *b, int32_t b_exp, int32_t n,
                       int8_t *out)
{
    /* an all-zero addend (e.g. a fully clamped branch) carries no meaningful exponent */
    if (tb_max_abs_s8(a, n) == 0) a_exp = b_exp;
    if (tb_max_abs_s8(b, n) == 0) b_exp = a_exp;
    /* common exponent e: both addends at most 2^23 above it, so |sum| <= 2 * 127 * 2^23 < 2^31 */
    const int32_t hi = a_exp > b_exp ? a_exp : b_exp;
    const int32_t lo = a_exp < b_exp ? a_exp : b_exp;
    const int32_t e = lo > hi - 23 ? lo : hi - 23;
    uint32_t max_abs = 0;
    for (int32_t i = 0; i < n; i++) {
        const uint32_t s = tb_abs_u32(tb_grad_align(a[i], a_exp - e) + tb_grad_align(b[i], b_exp - e));
        if (s > max_abs) max_abs = s;
    }
    const int32_t shift = tb_grad_shift_for(max_abs);
    for (int32_t i = 0; i < n; i++)
        out[i] = tb_grad_round_s8(tb_grad_align(a[i], a_exp - e) + tb_grad_align(b[i], b_exp - e),
                                  shift);
    return e + shift;
}

/* mult in [2^30, 2^31) rounded to 16 bits: [2^14, 2^15], so |g| * m16 < 2^22. */
static int32_t tb_mult16(int32_t mult)
{
    return (int32_t)(((uint32_t)mult + 0x8000u) >> 16);
}

int32_t tb_grad_scale_channels_s8(const int8_t *g, int32_t g_exp, int32_t n_pos, int32_t c,
                                  const int32_t *mult, const int32_t *shift, int8_t *h)
{
    /* g * s_w = g * m16 * 2^(shift - 15). Exactly, at a common exponent, the largest product has
     * bitlen top = max_k bitlen(max_p |g[p][k]| * m16[k]) + shift[k]: the bitlen rule then rounds
     * every product at 2^(top - 7) of that common scale. */
    int32_t top = INT32_MIN;
    for (int32_t k = 0; k < c; k++) {
        uint32_t g_max = 0;
        for (int32_t p = 0; p < n_pos; p++) {
            const uint32_t a = tb_abs_u32(g[p * c + k]);
            if (a > g_max) g_max = a;
        }
        const uint32_t prod = g_max * (uint32_t)tb_mult16(mult[k]);
        if (prod && tb_bitlen_u32(prod) + shift[k] > top) top = tb_bitlen_u32(prod) + shift[k];
    }
    if (top == INT32_MIN) {
        for (int32_t i = 0; i < n_pos * c; i++) h[i] = 0;
        return g_exp;
    }
    for (int32_t p = 0; p < n_pos; p++) {
        for (int32_t k = 0; k < c; k++) {
            /* >= 8 wherever the product is nonzero; a product < 2^22 rounds to 0 at 31 */
            const int32_t r = tb_clamp_i32(top - 7 - shift[k], 0, 31);
            h[p * c + k] = tb_grad_round_s8(g[p * c + k] * tb_mult16(mult[k]), r);
        }
    }
    return g_exp + top - 22;
}
