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
    if (!largest) {   /* all zero (no gradient reached these sums, e.g. a fresh classifier) */
        for (i = 0; i < n; i++) out[i] = 0;
        return acc_exp;
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

static int tb_all_zero_s8(const int8_t *a, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        if (a[i]) return 0;
    return 1;
}

#if TB_DSP
/* DSP path for addends at most 14 apart: s = x 2^d + y (x the addend of the larger exponent,
 * d = the difference, y at the common exponent), per four outputs SXTB16 of x's word (halves
 * [x0 x2], [x1 x3]), SXTB of each y byte and SMLABB/SMLATB with D = 2^d (a halfword for d <= 14):
 * exact, |s| < 2^22. Assembly, four outputs a loop. */
#define ADD_SUMS                                                        \
    "sxtb16 r7, r5\n\t"                                                 \
    "sxtb16 r5, r5, ror #8\n\t"                                         \
    "sxtb r9, r6\n\t"           "smlabb r9, r7, r3, r9\n\t"    STEP("r9", "0")   \
    "sxtb r9, r6, ror #8\n\t"   "smlabb r9, r5, r3, r9\n\t"    STEP("r9", "8")   \
    "sxtb r9, r6, ror #16\n\t"  "smlatb r9, r7, r3, r9\n\t"    STEP("r9", "16")  \
    "sxtb r9, r6, ror #24\n\t"  "smlatb r9, r5, r3, r9\n\t"    STEP("r9", "24")

/* The OR of |s| over the words of x up to end (its bit length is the largest |s|'s). */
__attribute__((naked)) static uint32_t add_or_abs(const int8_t *x, const int8_t *y, const int8_t *end,
                                                  int32_t d_mult)
{
    (void)x, (void)y, (void)end, (void)d_mult;
#define STEP(S, BYTE)                       \
    "eor r10, " S ", " S ", asr #31\n\t"   \
    "sub r10, r10, " S ", asr #31\n\t"     \
    "orr r4, r4, r10\n\t"
    __asm volatile(
        "push {r4-r10}\n\t"
        "movs r4, #0\n\t"
        "1:\n\t"
        "ldr r5, [r0], #4\n\t"
        "ldr r6, [r1], #4\n\t"
        ADD_SUMS
        "cmp r0, r2\n\t"
        "bne 1b\n\t"
        "mov r0, r4\n\t"
        "pop {r4-r10}\n\t"
        "bx lr\n\t");
#undef STEP
}

/* out = tb_grad_round_s8(s, shift) for shift >= 1, |s| < 2^(shift + 7): floor((s + 2^(shift-1)
 * - [s < 0]) / 2^shift) in [-128, 128], SSAT to [-128, 127] (BFI into the output word), and two
 * saturating negations of the word (QSUB8 from 0) take -128 to -127. out may alias x or y. */
typedef struct {
    const int8_t *end;
    int32_t d_mult, round, shift;
} add_round_ctx;

__attribute__((naked)) static void add_round(const int8_t *x, const int8_t *y, int8_t *out,
                                             const add_round_ctx *k)
{
    (void)x, (void)y, (void)out, (void)k;
#define STEP(S, BYTE)                       \
    "add r12, r4, " S ", asr #31\n\t"      \
    "add " S ", " S ", r12\n\t"            \
    "asr " S ", " S ", r8\n\t"             \
    "ssat " S ", #8, " S "\n\t"            \
    "bfi r11, " S ", #" BYTE ", #8\n\t"
    __asm volatile(
        "push {r4-r11, lr}\n\t"
        "mov lr, r2\n\t"                   /* out */
        "ldmia r3, {r2, r3, r4, r8}\n\t"    /* end d_mult round shift */
        "movs r10, #0\n\t"
        "1:\n\t"
        "ldr r5, [r0], #4\n\t"
        "ldr r6, [r1], #4\n\t"
        ADD_SUMS
        "qsub8 r11, r10, r11\n\t"
        "qsub8 r11, r10, r11\n\t"
        "str r11, [lr], #4\n\t"
        "cmp r0, r2\n\t"
        "bne 1b\n\t"
        "pop {r4-r11, pc}\n\t");
#undef STEP
}
#undef ADD_SUMS
#endif

int32_t tb_grad_add_s8(const int8_t *a, int32_t a_exp, const int8_t *b, int32_t b_exp, int32_t n,
                       int8_t *out)
{
    /* an all-zero addend (e.g. a fully clamped branch) carries no meaningful exponent */
    if (tb_all_zero_s8(a, n)) a_exp = b_exp;
    if (tb_all_zero_s8(b, n)) b_exp = a_exp;
    /* common exponent e: both addends at most 2^23 above it, so |sum| <= 2 * 127 * 2^23 < 2^31 */
    const int32_t hi = a_exp > b_exp ? a_exp : b_exp;
    const int32_t lo = a_exp < b_exp ? a_exp : b_exp;
    const int32_t e = lo > hi - 23 ? lo : hi - 23;
    uint32_t max_abs = 0;
    int32_t i = 0;
#if TB_DSP
    const int fast = n >= 4 && hi - lo <= 14;
    const int8_t *x = a_exp >= b_exp ? a : b, *y = a_exp >= b_exp ? b : a;
    if (fast) {
        i = n / 4 * 4;
        max_abs = add_or_abs(x, y, x + i, 1 << (hi - lo));
    }
#endif
    for (; i < n; i++) {
        const uint32_t s = tb_abs_u32(tb_grad_align(a[i], a_exp - e) + tb_grad_align(b[i], b_exp - e));
        if (s > max_abs) max_abs = s;
    }
    if (!max_abs) {   /* both addends zero */
        for (i = 0; i < n; i++) out[i] = 0;
        return e;
    }
    const int32_t shift = tb_grad_shift_for(max_abs);
    i = 0;
#if TB_DSP
    if (fast && shift >= 1) {
        const add_round_ctx k = {x + n / 4 * 4, 1 << (hi - lo), 1 << (shift - 1), shift};
        i = n / 4 * 4;
        add_round(x, y, out, &k);
    }
#endif
    for (; i < n; i++)
        out[i] = tb_grad_round_s8(tb_grad_align(a[i], a_exp - e) + tb_grad_align(b[i], b_exp - e),
                                  shift);
    return e + shift;
}

/* mult in [2^30, 2^31) rounded to 16 bits: [2^14, 2^15], so |g| * m16 < 2^22. */
static int32_t tb_mult16(int32_t mult)
{
    return (int32_t)(((uint32_t)mult + 0x8000u) >> 16);
}

/* max_p |g[p][k]| of one channel (stride c) */
static uint32_t scale_channel_max(const int8_t *g, int32_t n_pos, int32_t c)
{
    uint32_t g_max = 0;
    for (int32_t p = 0; p < n_pos; p++) {
        const uint32_t a = tb_abs_u32(g[p * c]);
        if (a > g_max) g_max = a;
    }
    return g_max;
}

/* h[p][k] of one channel: g * m16 rounded at 2^r */
static void scale_channel(const int8_t *g, int32_t n_pos, int32_t c, int32_t m16, int32_t r, int8_t *h)
{
    for (int32_t p = 0; p < n_pos; p++) h[p * c] = tb_grad_round_s8(g[p * c] * m16, r);
}

/* the rounding exponent of channel k (>= 8 wherever g * m16 is nonzero: a product below 2^22
 * rounds to 0 at 31) */
static int32_t scale_r(int32_t top, int32_t shift)
{
    return tb_clamp_i32(top - 7 - shift, 0, 31);
}

#if TB_DSP
/* DSP path, four adjacent channels down the positions (assembly: GCC packs the bytes with a
 * dozen instructions and keeps the loops' constants on the stack). */

/* The four channels' largest |g| as bytes: per position one LDR and SSUB8/SEL twice (bytewise
 * signed max and min, from the first position's; then one position if an odd number is left, then
 * two a loop), then |max|, |min| (SSUB8 from 0, SEL: 128 for -128) and their unsigned maximum
 * (USUB8, SEL). */
__attribute__((naked)) static uint32_t scale_quad_max(const int8_t *g, const int8_t *end, int32_t c,
                                                      int32_t odd_left)
{
    (void)g, (void)end, (void)c, (void)odd_left;
#define EXTREMES(W)                       \
    "ssub8 r12, " W ", r4\n\t"            \
    "sel r4, " W ", r4\n\t"               \
    "ssub8 r12, " W ", r5\n\t"            \
    "sel r5, r5, " W "\n\t"
    __asm volatile(
        "push {r4-r7}\n\t"
        "ldr r4, [r0]\n\t"                 /* max */
        "mov r5, r4\n\t"                   /* min */
        "add r0, r0, r2\n\t"
        "cbz r3, 3f\n\t"
        "ldr r6, [r0]\n\t"
        "add r0, r0, r2\n\t"
        EXTREMES("r6")
        "3:\n\t"
        "cmp r0, r1\n\t"
        "beq 2f\n\t"
        "1:\n\t"
        "ldr r6, [r0]\n\t"
        "ldr r7, [r0, r2]\n\t"
        "add r0, r0, r2, lsl #1\n\t"
        EXTREMES("r6") EXTREMES("r7")
        "cmp r0, r1\n\t"
        "bne 1b\n\t"
        "2:\n\t"
        "movs r6, #0\n\t"
        "ssub8 r12, r6, r4\n\t"
        "sel r4, r12, r4\n\t"
        "ssub8 r12, r6, r5\n\t"
        "sel r5, r12, r5\n\t"
        "usub8 r12, r4, r5\n\t"
        "sel r0, r4, r5\n\t"
        "pop {r4-r7}\n\t"
        "bx lr\n\t");
#undef EXTREMES
}

/* h = tb_grad_round_s8(g * m16, r) for four channels with every r in [2, 31]. Rounding half away
 * from zero is floor((P - [P < 0] + 2^(r-1)) / 2^r) = SMMULR(P - [P < 0], 2^(32 - r)) (exact: the
 * 64-bit product). The products come from SMULBB/SMULTT of the SXTB16 halves with -m16, which fits
 * a halfword even for m16 = 2^15, so the result is -h in [-128, 128]; SSAT to [-128, 127] and one
 * saturating negation of the packed word (QSUB8 from 0) give h clamped to [-127, 127].
 *   per position: w = g[0..3]; even, odd = SXTB16(w), SXTB16(w ror 8); v_j = SSAT8(SMMULR(p_j +
 *   (p_j >> 31), M_j)) with p_0 = SMULBB(even, neg_even), p_1 = SMULBB(odd, neg_odd), p_2, p_3 the
 *   SMULTTs; h[0..3] = QSUB8(0, v_0 | v_1 << 8 | v_2 << 16 | v_3 << 24) */
typedef struct {
    const int8_t *end;
    int32_t c;
    uint32_t neg_even, neg_odd;    /* [-m16[0], -m16[2]], [-m16[1], -m16[3]] */
    int32_t round[4];              /* 2^(32 - r[j]) */
} scale_quad_ctx;

__attribute__((naked)) static void scale_quad_run(const int8_t *g, int8_t *h, const scale_quad_ctx *k)
{
    (void)g, (void)h, (void)k;
#define SCALE(D, S, MUL, NEG, M)            \
    MUL " " D ", " S ", " NEG "\n\t"       \
    "add " D ", " D ", " D ", asr #31\n\t" \
    "smmulr " D ", " D ", " M "\n\t"       \
    "ssat " D ", #8, " D "\n\t"
    __asm volatile(
        "push {r4-r11, lr}\n\t"
        "ldmia r2, {r2-r9}\n\t"            /* end c neg_even neg_odd round[4] */
        "movs r10, #0\n\t"
        "1:\n\t"
        "ldr r11, [r0]\n\t"
        "add r0, r0, r3\n\t"
        "sxtb16 r12, r11, ror #8\n\t"
        "sxtb16 r11, r11\n\t"
        SCALE("lr", "r11", "smulbb", "r4", "r6")
        SCALE("r11", "r11", "smultt", "r4", "r8")
        "bfi lr, r11, #16, #8\n\t"
        SCALE("r11", "r12", "smulbb", "r5", "r7")
        "bfi lr, r11, #8, #8\n\t"
        SCALE("r12", "r12", "smultt", "r5", "r9")
        "bfi lr, r12, #24, #8\n\t"
        "qsub8 lr, r10, lr\n\t"
        "str lr, [r1]\n\t"
        "add r1, r1, r3\n\t"
        "cmp r0, r2\n\t"
        "bne 1b\n\t"
        "pop {r4-r11, pc}\n\t");
#undef SCALE
}

static void scale_quad(const int8_t *g, int32_t n_pos, int32_t c, const int32_t m16[4],
                       const int32_t r[4], int8_t *h)
{
    const scale_quad_ctx k = {g + n_pos * c, c, tb_pack_lo((uint32_t)-m16[0], (uint32_t)-m16[2]),
                              tb_pack_lo((uint32_t)-m16[1], (uint32_t)-m16[3]),
                              {1 << (32 - r[0]), 1 << (32 - r[1]), 1 << (32 - r[2]), 1 << (32 - r[3])}};
    scale_quad_run(g, h, &k);
}
#endif

int32_t tb_grad_scale_channels_s8(const int8_t *g, int32_t g_exp, int32_t n_pos, int32_t c,
                                  const int32_t *mult, const int32_t *shift, int8_t *h)
{
    /* g * s_w = g * m16 * 2^(shift - 15). Exactly, at a common exponent, the largest product has
     * bitlen top = max_k bitlen(max_p |g[p][k]| * m16[k]) + shift[k]: the bitlen rule then rounds
     * every product at 2^(top - 7) of that common scale. */
    int32_t top = INT32_MIN;
    int32_t k = 0;
#if TB_DSP
    for (; k + 4 <= c; k += 4) {
        const uint32_t g_max = scale_quad_max(g + k, g + k + n_pos * c, c, (n_pos - 1) & 1);
        for (int32_t j = 0; j < 4; j++) {
            const uint32_t prod = (g_max >> 8 * j & 0xFFu) * (uint32_t)tb_mult16(mult[k + j]);
            if (prod && 32 - __builtin_clz(prod) + shift[k + j] > top)   /* bit length by CLZ */
                top = 32 - __builtin_clz(prod) + shift[k + j];
        }
    }
#endif
    for (; k < c; k++) {
        const uint32_t prod = scale_channel_max(g + k, n_pos, c) * (uint32_t)tb_mult16(mult[k]);
        if (prod && tb_bitlen_u32(prod) + shift[k] > top) top = tb_bitlen_u32(prod) + shift[k];
    }
    if (top == INT32_MIN) {
        for (int32_t i = 0; i < n_pos * c; i++) h[i] = 0;
        return g_exp;
    }
    k = 0;
#if TB_DSP
    for (; k + 4 <= c; k += 4) {
        int32_t m16[4], r[4];
        int fast = 1;
        for (int32_t j = 0; j < 4; j++) {
            m16[j] = tb_mult16(mult[k + j]);
            r[j] = scale_r(top, shift[k + j]);
            fast &= r[j] >= 2 && m16[j] <= 1 << 15;
        }
        if (fast) {
            scale_quad(g + k, n_pos, c, m16, r, h + k);
        } else {
            for (int32_t j = 0; j < 4; j++) scale_channel(g + k + j, n_pos, c, m16[j], r[j], h + k + j);
        }
    }
#endif
    for (; k < c; k++)
        scale_channel(g + k, n_pos, c, tb_mult16(mult[k]), scale_r(top, shift[k]), h + k);
    return g_exp + top - 22;
}
