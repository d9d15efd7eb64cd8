/* Fully connected, int8, per-tensor or per-channel requantization (TFLite FULLY_CONNECTED). */
#include "tb_kernels.h"
#include "tb_requant.h"
#include "tb_dsp.h"

/* The plain-C path: the readable reference. */
static void fully_connected_plain(int32_t in_features, int32_t out_features, const int8_t *x,
                                  int32_t input_offset, const int8_t *w, const int32_t *bias,
                                  const int32_t *mult, const int32_t *shift, int32_t n_mult,
                                  int32_t output_offset, int32_t act_min, int32_t act_max,
                                  int32_t rounding, int8_t *y)
{
    for (int32_t o = 0; o < out_features; o++) {
        const int8_t *wo = w + o * in_features;
        int32_t acc = bias ? bias[o] : 0;
        for (int32_t i = 0; i < in_features; i++)
            acc += (int32_t)wo[i] * ((int32_t)x[i] + input_offset);
        const int32_t q = n_mult == 1 ? 0 : o;
        acc = tb_requantize_as(rounding, acc, mult[q], shift[q]) + output_offset;
        y[o] = (int8_t)tb_clamp_i32(acc, act_min, act_max);
    }
}

#if TB_DSP
/* DSP path: one input vector, every weight used once, so the work per MAC is the weight's: load
 * 4 at a time, unpack with SXTB16 (even and odd bytes), SMLAD against the input expanded once to
 * 2 (x + offset) on the stack (in SXTB16's order). Four output channels share each input load.
 * Inputs up to TB_FC_MAX_IN; longer vectors use the plain path (no scratch in this API). */
#define TB_FC_MAX_IN 512

typedef struct {
    const int32_t *xs;   /* expanded input: per group of 4, [even, odd] */
    const int32_t *xend;
    const int8_t *w;     /* row of the first of the 4 channels */
    int32_t in;          /* bytes per weight row */
    int32_t acc[4];      /* in: 2 * bias; out: 2 * accumulator */
} fc_ctx;

/* acc[i] += sum_j w[i][j] (2 x_j + 2 offset), four rows, in a multiple of 4 (assembly):
 *   per group of 4 inputs: LDRD the input words (r4, r5); per row: LDR 4 weights, SXTB16 even and
 *   odd, 2 SMLADs. Rows 1-3 at w + in, + 2 in, + 3 in (r10-r12). */
__attribute__((naked)) static void fc_rows4(fc_ctx *c)
{
    (void)c;
#define FC_ROW(ACC, ADDR)                 \
    "ldr r6, " ADDR "\n\t"                \
    "sxtb16 r7, r6\n\t"                   \
    "sxtb16 r6, r6, ror #8\n\t"           \
    "smlad " ACC ", r4, r7, " ACC "\n\t"  \
    "smlad " ACC ", r5, r6, " ACC "\n\t"
    __asm volatile(
        "push {r4-r11, lr}\n\t"
        "push {r0}\n\t"
        "ldmia r0, {r1, r2, r3, r4}\n\t"   /* xs xend w in */
        "mov r8, r1\n\t"
        "mov lr, r2\n\t"
        "mov r1, r3\n\t"
        "mov r10, r4\n\t"
        "add r11, r10, r10\n\t"
        "add r12, r11, r10\n\t"
        "add r0, r0, #16\n\t"
        "ldmia r0, {r0, r2, r3, r9}\n\t"    /* acc[0..3] */
        "1:\n\t"
        "ldrd r4, r5, [r8], #8\n\t"
        FC_ROW("r2", "[r1, r10]")
        FC_ROW("r3", "[r1, r11]")
        FC_ROW("r9", "[r1, r12]")
        FC_ROW("r0", "[r1], #4")
        "cmp r8, lr\n\t"
        "bne 1b\n\t"
        "pop {r1}\n\t"
        "add r1, r1, #16\n\t"
        "stmia r1, {r0, r2, r3, r9}\n\t"
        "pop {r4-r11, pc}\n\t");
#undef FC_ROW
}

static int fully_connected_dsp(int32_t in_features, int32_t out_features, const int8_t *x,
                               int32_t input_offset, const int8_t *w, const int32_t *bias,
                               const int32_t *mult, const int32_t *shift, int32_t n_mult,
                               int32_t output_offset, int32_t act_min, int32_t act_max,
                               int32_t rounding, int8_t *y)
{
    if (in_features % 4 != 0 || in_features > TB_FC_MAX_IN) return 0;
    int32_t xs[TB_FC_MAX_IN / 2];
    const int32_t off2 = (int32_t)(((uint32_t)(2 * input_offset) & 0xFFFFu) |
                                   ((uint32_t)(2 * input_offset) << 16));
    for (int32_t j = 0; j < in_features / 4; j++) {
        const uint32_t v = tb_read32(x + 4 * j);
        xs[2 * j] = __sxtab16(__sxtab16(off2, v), v);
        xs[2 * j + 1] = tb_sxtab16_ror8(tb_sxtab16_ror8(off2, v), v);
    }
    fc_ctx ctx;
    ctx.xs = xs;
    ctx.xend = xs + in_features / 2;
    ctx.in = in_features;
    const int full = act_min == -128 && act_max == 127;
    for (int32_t o = 0; o < out_features; o += 4) {
        const int32_t n = out_features - o < 4 ? out_features - o : 4;
        if (n == 4) {
            for (int32_t i = 0; i < 4; i++) ctx.acc[i] = bias ? 2 * bias[o + i] : 0;
            ctx.w = w + o * in_features;
            fc_rows4(&ctx);
        } else { /* the last 1-3 rows, one at a time, same arithmetic */
            for (int32_t i = 0; i < n; i++) {
                const int8_t *wr = w + (o + i) * in_features;
                int32_t a = bias ? 2 * bias[o + i] : 0;
                for (int32_t j = 0; j < in_features / 4; j++) {
                    const uint32_t v = tb_read32(wr + 4 * j);
                    a = __smlad(xs[2 * j], __sxtb16(v), a);
                    a = __smlad(xs[2 * j + 1], tb_sxtb16_ror8(v), a);
                }
                ctx.acc[i] = a;
            }
        }
        for (int32_t i = 0; i < n; i++) {
            const int32_t q = n_mult == 1 ? 0 : o + i;
            const int32_t e = -shift[q];
            const int32_t round = tb_dsp_rounding(e, output_offset);
            int32_t v = rounding == TB_ROUND_SINGLE ? tb_dsp_requant_single(ctx.acc[i], mult[q], round, e)
                                                    : tb_dsp_requant(ctx.acc[i], mult[q], round, e);
            if (!full) v = tb_clamp_i32(v, act_min, act_max);
            y[o + i] = (int8_t)v;
        }
    }
    return 1;
}
#endif

tb_status tb_fully_connected_s8(int32_t in_features, int32_t out_features, const int8_t *x,
                                int32_t input_offset, const int8_t *w, const int32_t *bias,
                                const int32_t *mult, const int32_t *shift, int32_t n_mult,
                                int32_t output_offset, int32_t act_min, int32_t act_max,
                                int32_t rounding, int8_t *y)
{
    if (in_features <= 0 || out_features <= 0 || (n_mult != 1 && n_mult != out_features) ||
        act_min > act_max || act_min < -128 || act_max > 127 || !tb_rounding_ok(rounding))
        return TB_ERR_ARG;
#if TB_DSP
    if (tb_dsp_shift_ok(shift, n_mult) && tb_dsp_bias_ok(bias, out_features, in_features) &&
        fully_connected_dsp(in_features, out_features, x, input_offset, w, bias, mult, shift,
                            n_mult, output_offset, act_min, act_max, rounding, y))
        return TB_OK;
#endif
    fully_connected_plain(in_features, out_features, x, input_offset, w, bias, mult, shift,
                          n_mult, output_offset, act_min, act_max, rounding, y);
    return TB_OK;
}
