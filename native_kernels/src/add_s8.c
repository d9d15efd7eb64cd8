/* Residual add with requantization, int8 (TFLite ADD). */
#include "tb_kernels.h"
#include "tb_requant.h"
#include "tb_dsp.h"
#include "tb_dsp_gemm.h"

/* The plain-C path: the readable reference. */
static void add_plain(const tb_add_params *p, const int8_t *a, const int8_t *b, int32_t n, int8_t *y)
{
    for (int32_t i = 0; i < n; i++) {
        const int32_t sa = (p->input1_offset + a[i]) * (1 << p->left_shift);
        const int32_t sb = (p->input2_offset + b[i]) * (1 << p->left_shift);
        const int32_t ra = tb_requantize(sa, p->input1_multiplier, p->input1_shift);
        const int32_t rb = tb_requantize(sb, p->input2_multiplier, p->input2_shift);
        const int32_t out = tb_requantize(ra + rb, p->output_multiplier, p->output_shift) +
                            p->output_offset;
        y[i] = (int8_t)tb_clamp_i32(out, p->act_min, p->act_max);
    }
}

#if TB_DSP
/* DSP path (docs/kernels.md, "Residual add"). TFLite gives the input of the larger scale the
 * multiplier 1/2 exactly (2^30, shift 0), and with left_shift 20 its term is then exactly
 * (x + off) 2^19; call that input "l" and the other "o". The other term depends on one byte: a
 * table of 256 entries per call. With e = -shift, each requantization is the exact form of tb_dsp.h,
 *   requantize(acc) = SMMLAR(2 acc, M, 2^(e-1) - [acc < 0]) >> e   (e = 0: SMMLAR(2 acc, M, 0)),
 * so per output
 *   2 s = (l << 20) + T[o],   T[o] = 2 requantize((o + off_o) 2^20) + off_l 2^20
 *   y   = SSAT8(SMMLAR(2 s, M_out, K - [s < 0]) >> e_out),   K = 2^(e_out - 1) + out_off 2^e_out
 * Conditions (add_dsp_ok): left_shift 20; every offset in [-128, 128]; o's multiplier >= 0 and
 * shift in [-30, 0], its real value at most 1/2 (so |T[o] - off_l 2^20| <= 2^28 and |s| <= 2^28);
 * output multiplier >= 0 and e_out in [1, 23] (SMMLAR's high word, |s| + 1 + 2^22 + 128 2^23,
 * fits). TFLite's parameters fail them only for scales far apart: an output scale over 32 times
 * the larger input's (or under 2^-18 times), inputs 2^30 or more apart. */
#define TB_ADD_HALF (1 << 30)

typedef struct {
    int8_t *end;           /* y + a multiple of 4 */
    const int32_t *table;  /* T[0]: indexed by the signed byte o */
    int32_t mult, round, e;
} add_ctx;

/* Four outputs a loop (assembly), two at a time interleaved:
 *   s2 = T[*o++] + (*l++ << 20); t = SMMLAR(s2, M, K + (s2 >> 31)); *y++ = SSAT8(t >> e)
 * Each output's inputs are read before it is written, so y may be l or o. */
__attribute__((naked)) static void add_run4(const int8_t *l, const int8_t *o, int8_t *y,
                                            const add_ctx *k)
{
    (void)l, (void)o, (void)y, (void)k;
#define ADD_LOAD(S, L)                    \
    "ldrsb " S ", [r1], #1\n\t"           \
    "ldrsb " L ", [r0], #1\n\t"           \
    "ldr " S ", [r4, " S ", lsl #2]\n\t"  \
    "add " S ", " S ", " L ", lsl #20\n\t"
#define ADD_STORE(S, T)                   \
    "add " T ", r6, " S ", asr #31\n\t"   \
    "smmlar " S ", " S ", r5, " T "\n\t"  \
    "asr " S ", " S ", r7\n\t"            \
    "ssat " S ", #8, " S "\n\t"           \
    "strb " S ", [r2], #1\n\t"
    __asm volatile(
        "push {r4-r11, lr}\n\t"
        "ldmia r3, {r3, r4, r5, r6, r7}\n\t"   /* end table mult round e */
        "1:\n\t"
        ADD_LOAD("r8", "r9") ADD_LOAD("r10", "r11") ADD_STORE("r8", "r9") ADD_STORE("r10", "r11")
        ADD_LOAD("r8", "r9") ADD_LOAD("r10", "r11") ADD_STORE("r8", "r9") ADD_STORE("r10", "r11")
        "cmp r2, r3\n\t"
        "bne 1b\n\t"
        "pop {r4-r11, pc}\n\t");
#undef ADD_LOAD
#undef ADD_STORE
}

static int add_offset_ok(int32_t off)
{
    return off >= -128 && off <= 128;
}

/* The parameters of the DSP path: l, o and the other input's offset, multiplier and shift; 0 when
 * it is not exact for them (then the plain path runs). */
typedef struct {
    const int8_t *l, *o;
    int32_t off_l, off_o, mult_o, shift_o;
} add_inputs;

static int add_dsp_ok(const tb_add_params *p, const int8_t *a, const int8_t *b, add_inputs *in)
{
    if (p->input1_multiplier == TB_ADD_HALF && p->input1_shift == 0) {
        *in = (add_inputs){a, b, p->input1_offset, p->input2_offset, p->input2_multiplier,
                           p->input2_shift};
    } else if (p->input2_multiplier == TB_ADD_HALF && p->input2_shift == 0) {
        *in = (add_inputs){b, a, p->input2_offset, p->input1_offset, p->input1_multiplier,
                           p->input1_shift};
    } else {
        return 0;
    }
    return p->left_shift == 20 && add_offset_ok(in->off_l) && add_offset_ok(in->off_o) &&
           in->mult_o >= 0 && in->shift_o <= 0 && in->shift_o >= -30 &&
           (in->shift_o < 0 || in->mult_o <= TB_ADD_HALF) && add_offset_ok(p->output_offset) &&
           p->output_multiplier >= 0 && p->output_shift <= -1 && p->output_shift >= -23;
}

static void add_dsp(const tb_add_params *p, const add_inputs *in, int32_t n, int8_t *y)
{
    /* T[x] for the signed byte x, by the exact requantization with e_o = -shift_o (for e_o = 0
     * the high-mul alone: no rounding, no sign) */
    int32_t entries[256];
    int32_t *table = entries + 128;
    const int32_t e_o = -in->shift_o;
    const int32_t round_o = e_o ? 1 << (e_o - 1) : 0, sign_o = e_o ? 1 : 0;
    for (int32_t x = -128; x < 128; x++) {
        const int32_t v2 = (x + in->off_o) * (1 << 21);
        const int32_t r = tb_smmlar(v2, in->mult_o, round_o - (v2 < 0 ? sign_o : 0)) >> e_o;
        table[x] = 2 * r + in->off_l * (1 << 20);
    }
    const int32_t e = -p->output_shift;
    const add_ctx k = {y + (n & ~3), table, p->output_multiplier,
                       tb_dsp_rounding(e, p->output_offset), e};
    if (n >= 4) add_run4(in->l, in->o, y, &k);
    for (int32_t i = n & ~3; i < n; i++)
        y[i] = (int8_t)tb_dsp_requant(table[in->o[i]] + in->l[i] * (1 << 20), k.mult, k.round, e);
    if (p->act_min != -128 || p->act_max != 127) tb_dsp_clamp_s8(y, n, p->act_min, p->act_max);
}
#endif

tb_status tb_add_s8(const tb_add_params *p, const int8_t *a, const int8_t *b, int32_t n, int8_t *y)
{
    if (n <= 0 || p->left_shift < 0 || p->left_shift > 20 || p->act_min > p->act_max ||
        p->act_min < -128 || p->act_max > 127)
        return TB_ERR_ARG;
#if TB_DSP
    add_inputs in;
    if (add_dsp_ok(p, a, b, &in)) {
        add_dsp(p, &in, n, y);
        return TB_OK;
    }
#endif
    add_plain(p, a, b, n, y);
    return TB_OK;
}
