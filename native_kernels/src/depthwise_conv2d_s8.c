/* Depthwise k x k convolution, int8, depth multiplier 1. */
#include "tb_kernels.h"
#include "tb_requant.h"
#include "tb_checks.h"
#include "tb_dsp.h"

/* The plain-C path: the readable reference. */
static void depthwise_plain(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                            const int8_t *w, const int32_t *bias, const int32_t *mult,
                            const int32_t *shift, int8_t *y, int32_t c_begin, int32_t c_end)
{
    const int32_t ch = in.c;
    for (int32_t oy = 0; oy < out.h; oy++) {
        for (int32_t ox = 0; ox < out.w; ox++) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            for (int32_t c = c_begin; c < c_end; c++) {
                int32_t acc = bias ? bias[c] : 0;
                for (int32_t ky = 0; ky < p->kernel_h; ky++) {
                    const int32_t iy = iy0 + ky;
                    if (iy < 0 || iy >= in.h) continue;
                    for (int32_t kx = 0; kx < p->kernel_w; kx++) {
                        const int32_t ix = ix0 + kx;
                        if (ix < 0 || ix >= in.w) continue;
                        acc += (int32_t)w[(ky * p->kernel_w + kx) * ch + c] *
                               ((int32_t)x[(iy * in.w + ix) * ch + c] + p->input_offset);
                    }
                }
                acc = tb_requantize(acc, mult[c], shift[c]) + p->output_offset;
                y[(oy * out.w + ox) * ch + c] = (int8_t)tb_clamp_i32(acc, p->act_min, p->act_max);
            }
        }
    }
}

#if TB_DSP
/* DSP path (docs/kernels.md, "Optimized kernels"). Four channels at a time. Each input row they
 * need is expanded once into a ring of k rows on the stack (slot = row mod k): per channel, the
 * padded row as int16 pairs R[m] = [x(2m) + off, x(2m + 1) + off] (padding expands to 0). An
 * output row of one channel is then one assembly call that, per output (pair), runs over the k
 * slots with SMLADs along x, h = (k - 1) / 2, E_j = [w(2j), w(2j + 1)], O_j = [w(2j - 1), w(2j)]:
 *   stride 1, outputs 2m, 2m + 1:
 *     out(2m)     = sum_{j<h} SMLAD(R[m + j], E_j) + SMLABT(R[m + h], O_h)
 *     out(2m + 1) = SMLATB(R[m], E_0) + sum_{1<=j<=h} SMLAD(R[m + j], O_j)
 *   stride 2, outputs m, m + 1: out(m) = sum_{j<h} SMLAD(R[m + j], E_j) + SMLABT(R[m + h], O_h)
 * (k + 1 instructions per 2k MACs at stride 1). Slot s holds kernel row (s - iy0) mod k for the
 * current output row: the weights of each channel are stored for rows 0..k-1 and again 0..k-2,
 * so the call just starts at the right row. Weights are doubled, so the accumulators are
 * 2 * acc as tb_dsp_requant wants. */
#define TB_DW_GROUP 4
#define TB_DW_RING_WORDS 576                  /* 4 channels x k slots x pairs per slot */
#define TB_DW_PAIRS_3 48                      /* pairs per slot: 576 / (4 k) */
#define TB_DW_PAIRS_5 28
#define TB_DW_PAIRS_7 20
#define TB_DW_ROWB_3 192                      /* bytes per slot (assembly offsets) */
#define TB_DW_ROWB_5 112
#define TB_DW_ROWB_7 80
#define TB_DW_PAIRS_N 8                       /* plane mode: the whole padded plane, narrow rows */
#define TB_DW_ROWB_N 32
#define TB_DW_STR(x) #x
#define TB_DW_XSTR(x) TB_DW_STR(x)

/* output rows of the group's channels */
typedef struct {
    const int32_t *p;    /* channel 0: slot 0, pair 0 of the first output row */
    int32_t steps;       /* bytes the data pointer moves over one output row */
    const int32_t *wts;  /* channel 0: weight row of slot 0 (rows follow in slot order) */
    int8_t *y;           /* channel 0: first output */
    int32_t ystep;       /* bytes between outputs along x */
    const int32_t *rq;   /* per channel {2 bias, M, K, e} */
    int32_t nch;         /* channels */
    int32_t gstride;     /* bytes from a channel's rows to the next channel's */
    int32_t wstride;     /* bytes from a channel's weights to the next channel's */
    int32_t nrows;       /* output rows */
    int32_t prow;        /* bytes from an output row's data to the next one's */
    int32_t yrow;        /* bytes from an output row's outputs to the next one's */
} dw_row_ctx;

/* ---- assembly: nrows output rows of nch channels. Frame: 0 wts, 4 y, 8 ystep, 12 pend, 16 b2,
 * 20 M, 24 K, 28 e, 32 p, 36 rq, 40 channels left, 44 gstride, 48 wstride, 52 y of the channel,
 * 56 row data, 60 row y, 64 rows left, 68 nrows, 72 prow, 76 yrow, 80 steps.
 * Labels: 0 a channel (constants into the frame), 8 an output row (lr = data, pend, y), 1 a step
 * (two outputs), DW_ROWEND the next row, DW_NEXT the next channel. */
#define DW_PROLOGUE                                                                  \
    "push {r4-r11, lr}\n\t"                                                          \
    "sub sp, sp, #88\n\t"                                                            \
    "ldmia r0!, {r1, r2, r3, r4, r5, r6}\n\t" /* p steps wts y ystep rq */           \
    "str r1, [sp, #32]\n\t"                                                          \
    "str r2, [sp, #80]\n\t"                                                          \
    "str r3, [sp, #0]\n\t"                                                           \
    "str r4, [sp, #52]\n\t"                                                          \
    "str r5, [sp, #8]\n\t"                                                           \
    "str r6, [sp, #36]\n\t"                                                          \
    "ldmia r0, {r1, r2, r3, r4, r5, r6}\n\t" /* nch gstride wstride nrows prow yrow */ \
    "str r1, [sp, #40]\n\t"                                                          \
    "strd r2, r3, [sp, #44]\n\t"                                                     \
    "str r4, [sp, #68]\n\t"                                                          \
    "strd r5, r6, [sp, #72]\n\t"                                                     \
    "0:\n\t"                                                                         \
    "ldr r0, [sp, #36]\n\t"                                                          \
    "ldmia r0!, {r1, r2, r3, r4}\n\t"                                                \
    "str r0, [sp, #36]\n\t"                                                          \
    "add r0, sp, #16\n\t"                                                            \
    "stmia r0, {r1, r2, r3, r4}\n\t"                                                 \
    "ldr r0, [sp, #32]\n\t"                                                          \
    "ldr r1, [sp, #52]\n\t"                                                          \
    "strd r0, r1, [sp, #56]\n\t"                                                     \
    "ldr r0, [sp, #68]\n\t"                                                          \
    "str r0, [sp, #64]\n\t"                                                          \
    "8:\n\t"                                                                         \
    "ldrd lr, r1, [sp, #56]\n\t"                                                     \
    "ldr r0, [sp, #80]\n\t"                                                          \
    "add r0, r0, lr\n\t"                                                             \
    "str r0, [sp, #12]\n\t"                                                          \
    "str r1, [sp, #4]\n\t"
#define DW_ROWEND                                                                    \
    "ldrd r0, r1, [sp, #56]\n\t"                                                     \
    "ldrd r2, r3, [sp, #72]\n\t"                                                     \
    "add r0, r0, r2\n\t"                                                             \
    "add r1, r1, r3\n\t"                                                             \
    "strd r0, r1, [sp, #56]\n\t"                                                     \
    "ldr r0, [sp, #64]\n\t"                                                          \
    "subs r0, r0, #1\n\t"                                                            \
    "str r0, [sp, #64]\n\t"                                                          \
    "bne 8b\n\t"
#define DW_NEXT                                                                      \
    "ldr r0, [sp, #40]\n\t"                                                          \
    "subs r0, r0, #1\n\t"                                                            \
    "beq 9f\n\t"                                                                     \
    "str r0, [sp, #40]\n\t"                                                          \
    "ldrd r0, r1, [sp, #44]\n\t"                                                     \
    "ldr r2, [sp, #32]\n\t"                                                          \
    "add r2, r2, r0\n\t"                                                             \
    "str r2, [sp, #32]\n\t"                                                          \
    "ldr r2, [sp, #0]\n\t"                                                           \
    "add r2, r2, r1\n\t"                                                             \
    "str r2, [sp, #0]\n\t"                                                           \
    "ldr r2, [sp, #52]\n\t"                                                          \
    "add r2, r2, #1\n\t"                                                             \
    "str r2, [sp, #52]\n\t"                                                          \
    "b 0b\n\t"                                                                       \
    "9:\n\t"                                                                         \
    "add sp, sp, #88\n\t"                                                            \
    "pop {r4-r11, pc}\n\t"
/* requantize r0 -> [y], r1 -> [y + ystep]; y += 2 ystep (free: r2-r7) */
#define DW_REQUANT2                                                                  \
    "ldrd r2, r3, [sp, #20]\n\t"                                                     \
    "ldr r4, [sp, #28]\n\t"                                                          \
    "ldrd r5, r6, [sp, #4]\n\t"                                                      \
    "add r7, r3, r0, asr #31\n\t"                                                    \
    "smmlar r7, r0, r2, r7\n\t"                                                      \
    "asr r7, r7, r4\n\t"                                                             \
    "ssat r7, #8, r7\n\t"                                                            \
    "strb r7, [r5]\n\t"                                                              \
    "add r7, r3, r1, asr #31\n\t"                                                    \
    "smmlar r7, r1, r2, r7\n\t"                                                      \
    "asr r7, r7, r4\n\t"                                                             \
    "ssat r7, #8, r7\n\t"                                                            \
    "strb r7, [r5, r6]\n\t"                                                          \
    "add r5, r5, r6, lsl #1\n\t"                                                     \
    "str r5, [sp, #4]\n\t"
#define DW_STEPEND(ADVANCE)                                                          \
    "add lr, lr, #" #ADVANCE "\n\t"                                                  \
    "ldr r2, [sp, #12]\n\t"                                                          \
    "cmp lr, r2\n\t"                                                                 \
    "bne 1b\n\t"
#define DW_INIT2 "ldr r12, [sp, #0]\n\t" "ldr r0, [sp, #16]\n\t" "mov r1, r0\n\t"
#define RO(ROWB, s) TB_DW_XSTR(ROWB) "*" #s

/* k = 7, stride 1: per slot R[m..m+3] (r2-r5), E0 E1 E2 O1 O2 O3 (r6-r11, LDM from r12) */
#define DW7S1_ROW(OFF)                                                               \
    "ldrd r2, r3, [lr, #(" OFF ")]\n\t"                                              \
    "ldrd r4, r5, [lr, #(" OFF "+8)]\n\t"                                            \
    "ldmia r12!, {r6, r7, r8, r9, r10, r11}\n\t"                                     \
    "smlad r0, r2, r6, r0\n\t"                                                       \
    "smlad r0, r3, r7, r0\n\t"                                                       \
    "smlad r0, r4, r8, r0\n\t"                                                       \
    "smlabt r0, r5, r11, r0\n\t"                                                     \
    "smlatb r1, r2, r6, r1\n\t"                                                      \
    "smlad r1, r3, r9, r1\n\t"                                                       \
    "smlad r1, r4, r10, r1\n\t"                                                      \
    "smlad r1, r5, r11, r1\n\t"
/* k = 7, stride 2, outputs m, m+1: R[m..m+4] (r2-r6), E0 E1 E2 O3 (r7-r10) */
#define DW7S2_ROW(OFF)                                                               \
    "ldrd r2, r3, [lr, #(" OFF ")]\n\t"                                              \
    "ldrd r4, r5, [lr, #(" OFF "+8)]\n\t"                                            \
    "ldr r6, [lr, #(" OFF "+16)]\n\t"                                                \
    "ldmia r12!, {r7, r8, r9, r10}\n\t"                                              \
    "smlad r0, r2, r7, r0\n\t"                                                       \
    "smlad r0, r3, r8, r0\n\t"                                                       \
    "smlad r0, r4, r9, r0\n\t"                                                       \
    "smlabt r0, r5, r10, r0\n\t"                                                     \
    "smlad r1, r3, r7, r1\n\t"                                                       \
    "smlad r1, r4, r8, r1\n\t"                                                       \
    "smlad r1, r5, r9, r1\n\t"                                                       \
    "smlabt r1, r6, r10, r1\n\t"
/* k = 5, stride 1: R[m..m+2] (r2-r4), E0 E1 O1 O2 (r6-r9) */
#define DW5S1_ROW(OFF)                                                               \
    "ldrd r2, r3, [lr, #(" OFF ")]\n\t"                                              \
    "ldr r4, [lr, #(" OFF "+8)]\n\t"                                                 \
    "ldmia r12!, {r6, r7, r8, r9}\n\t"                                               \
    "smlad r0, r2, r6, r0\n\t"                                                       \
    "smlad r0, r3, r7, r0\n\t"                                                       \
    "smlabt r0, r4, r9, r0\n\t"                                                      \
    "smlatb r1, r2, r6, r1\n\t"                                                      \
    "smlad r1, r3, r8, r1\n\t"                                                       \
    "smlad r1, r4, r9, r1\n\t"
/* k = 5, stride 2, outputs m, m+1: R[m..m+3] (r2-r5), E0 E1 O2 (r6-r8) */
#define DW5S2_ROW(OFF)                                                               \
    "ldrd r2, r3, [lr, #(" OFF ")]\n\t"                                              \
    "ldrd r4, r5, [lr, #(" OFF "+8)]\n\t"                                            \
    "ldmia r12!, {r6, r7, r8}\n\t"                                                   \
    "smlad r0, r2, r6, r0\n\t"                                                       \
    "smlad r0, r3, r7, r0\n\t"                                                       \
    "smlabt r0, r4, r8, r0\n\t"                                                      \
    "smlad r1, r3, r6, r1\n\t"                                                       \
    "smlad r1, r4, r7, r1\n\t"                                                       \
    "smlabt r1, r5, r8, r1\n\t"
#define DW7S1_BODY(B) DW_INIT2 DW7S1_ROW(RO(B, 0)) DW7S1_ROW(RO(B, 1)) DW7S1_ROW(RO(B, 2)) \
    DW7S1_ROW(RO(B, 3)) DW7S1_ROW(RO(B, 4)) DW7S1_ROW(RO(B, 5)) DW7S1_ROW(RO(B, 6))      \
    DW_REQUANT2 DW_STEPEND(4)
#define DW7S2_BODY(B) DW_INIT2 DW7S2_ROW(RO(B, 0)) DW7S2_ROW(RO(B, 1)) DW7S2_ROW(RO(B, 2)) \
    DW7S2_ROW(RO(B, 3)) DW7S2_ROW(RO(B, 4)) DW7S2_ROW(RO(B, 5)) DW7S2_ROW(RO(B, 6))      \
    DW_REQUANT2 DW_STEPEND(8)
#define DW5S1_BODY(B) DW_INIT2 DW5S1_ROW(RO(B, 0)) DW5S1_ROW(RO(B, 1)) DW5S1_ROW(RO(B, 2)) \
    DW5S1_ROW(RO(B, 3)) DW5S1_ROW(RO(B, 4)) DW_REQUANT2 DW_STEPEND(4)
#define DW5S2_BODY(B) DW_INIT2 DW5S2_ROW(RO(B, 0)) DW5S2_ROW(RO(B, 1)) DW5S2_ROW(RO(B, 2)) \
    DW5S2_ROW(RO(B, 3)) DW5S2_ROW(RO(B, 4)) DW_REQUANT2 DW_STEPEND(8)

/* k = 3: the six weight words (E0, O1 of each slot) stay in r4-r9; y r10, ystep r11, bias r12 */
#define DW3_ROWSETUP                                                                 \
    "ldr r0, [sp, #0]\n\t"                                                           \
    "ldmia r0, {r4, r5, r6, r7, r8, r9}\n\t"                                         \
    "ldrd r10, r11, [sp, #4]\n\t"                                                    \
    "ldr r12, [sp, #16]\n\t"
#define DW3_REQUANT2                                                                 \
    "ldrd r2, r3, [sp, #20]\n\t"                 /* M K */                           \
    "add r12, r3, r0, asr #31\n\t"                                                   \
    "smmlar r12, r0, r2, r12\n\t"                                                    \
    "ldr r0, [sp, #28]\n\t"                      /* e */                             \
    "asr r12, r12, r0\n\t"                                                           \
    "ssat r12, #8, r12\n\t"                                                          \
    "strb r12, [r10]\n\t"                                                            \
    "add r12, r3, r1, asr #31\n\t"                                                   \
    "smmlar r12, r1, r2, r12\n\t"                                                    \
    "asr r12, r12, r0\n\t"                                                           \
    "ssat r12, #8, r12\n\t"                                                          \
    "strb r12, [r10, r11]\n\t"                                                       \
    "add r10, r10, r11, lsl #1\n\t"                                                  \
    "ldr r12, [sp, #16]\n\t"                     /* bias */
#define DW3S1_BODY(B)                                                                \
    "ldrd r2, r3, [lr], #4\n\t"                                                      \
    "smlad r0, r2, r4, r12\n\t"                                                      \
    "smlatb r1, r2, r4, r12\n\t"                                                     \
    "smlabt r0, r3, r5, r0\n\t"                                                      \
    "smlad r1, r3, r5, r1\n\t"                                                       \
    "ldrd r2, r3, [lr, #(" RO(B, 1) "-4)]\n\t"                                       \
    "smlad r0, r2, r6, r0\n\t"                                                       \
    "smlatb r1, r2, r6, r1\n\t"                                                      \
    "smlabt r0, r3, r7, r0\n\t"                                                      \
    "smlad r1, r3, r7, r1\n\t"                                                       \
    "ldrd r2, r3, [lr, #(" RO(B, 2) "-4)]\n\t"                                       \
    "smlad r0, r2, r8, r0\n\t"                                                       \
    "smlatb r1, r2, r8, r1\n\t"                                                      \
    "smlabt r0, r3, r9, r0\n\t"                                                      \
    "smlad r1, r3, r9, r1\n\t"                                                       \
    DW3_REQUANT2                                                                     \
    "ldr r2, [sp, #12]\n\t"                                                          \
    "cmp lr, r2\n\t"                                                                 \
    "bne 1b\n\t"
/* k = 3, stride 2, outputs m, m+1: R[m], R[m+1] (r2, r3), then R[m+2] (r2) */
#define DW3S2_ROW(OFF, E, O)                                                         \
    "ldrd r2, r3, [lr, #(" OFF ")]\n\t"                                              \
    "smlad r0, r2, " E ", r0\n\t"                                                    \
    "smlabt r0, r3, " O ", r0\n\t"                                                   \
    "ldr r2, [lr, #(" OFF "+8)]\n\t"                                                 \
    "smlad r1, r3, " E ", r1\n\t"                                                    \
    "smlabt r1, r2, " O ", r1\n\t"
#define DW3S2_BODY(B)                                                                \
    "mov r0, r12\n\t"                                                                \
    "mov r1, r12\n\t"                                                                \
    DW3S2_ROW("0", "r4", "r5")                                                       \
    DW3S2_ROW(RO(B, 1), "r6", "r7")                                                  \
    DW3S2_ROW(RO(B, 2), "r8", "r9")                                                  \
    "add lr, lr, #8\n\t"                                                             \
    DW3_REQUANT2                                                                     \
    "ldr r2, [sp, #12]\n\t"                                                          \
    "cmp lr, r2\n\t"                                                                 \
    "bne 1b\n\t"

#define DW_FUNCTION(NAME, SETUP, BODY)                                               \
    __attribute__((naked)) static void NAME(const dw_row_ctx *c)                     \
    {                                                                                \
        (void)c;                                                                     \
        __asm volatile(DW_PROLOGUE SETUP "1:\n\t" BODY DW_ROWEND DW_NEXT);           \
    }
/* ring mode (one output row per call, wide slots) and plane mode (all rows, narrow slots) */
DW_FUNCTION(dw3s1, DW3_ROWSETUP, DW3S1_BODY(TB_DW_ROWB_3))
DW_FUNCTION(dw3s2, DW3_ROWSETUP, DW3S2_BODY(TB_DW_ROWB_3))
DW_FUNCTION(dw5s1, "", DW5S1_BODY(TB_DW_ROWB_5))
DW_FUNCTION(dw5s2, "", DW5S2_BODY(TB_DW_ROWB_5))
DW_FUNCTION(dw7s1, "", DW7S1_BODY(TB_DW_ROWB_7))
DW_FUNCTION(dw7s2, "", DW7S2_BODY(TB_DW_ROWB_7))
DW_FUNCTION(dw3s1n, DW3_ROWSETUP, DW3S1_BODY(TB_DW_ROWB_N))
DW_FUNCTION(dw3s2n, DW3_ROWSETUP, DW3S2_BODY(TB_DW_ROWB_N))
DW_FUNCTION(dw5s1n, "", DW5S1_BODY(TB_DW_ROWB_N))
DW_FUNCTION(dw5s2n, "", DW5S2_BODY(TB_DW_ROWB_N))
DW_FUNCTION(dw7s1n, "", DW7S1_BODY(TB_DW_ROWB_N))
DW_FUNCTION(dw7s2n, "", DW7S2_BODY(TB_DW_ROWB_N))

/* ---- expansion: interior pairs of a row (both columns inside the input) for four channels.
 * Per pair: the two positions' words (4 channels each), PKHBT / PKHTB to [c0 c1 | c0 c1] and
 * [c2 c3 | c2 c3] bytes of the two columns, four SXTAB16 (+ offset), four stores. */
typedef struct {
    const int8_t *src;  /* first column of the first pair, channel c0 */
    int32_t cstride;    /* bytes between columns (channels) */
    int32_t off2;       /* offset in both halfwords */
    int32_t *dst;       /* channel 0's first pair */
    int32_t *dend;      /* dst after the last pair */
    int32_t gstride;    /* bytes between channels' rows */
} dw_expand_ctx;

__attribute__((naked)) static void dw_expand_pairs(const dw_expand_ctx *c)
{
    (void)c;
    __asm volatile(
        "push {r4-r11, lr}\n\t"
        "ldmia r0, {r0, r1, r2, r3, r11, lr}\n\t"  /* src C off2 dst dend gstride */
        "add r9, lr, lr\n\t"
        "add r10, r9, lr\n\t"
        "1:\n\t"
        "ldr r4, [r0]\n\t"
        "ldr r5, [r0, r1]\n\t"
        "add r0, r0, r1, lsl #1\n\t"
        "pkhbt r6, r4, r5, lsl #16\n\t"
        "pkhtb r7, r5, r4, asr #16\n\t"
        "sxtab16 r4, r2, r6\n\t"
        "sxtab16 r5, r2, r6, ror #8\n\t"
        "sxtab16 r6, r2, r7\n\t"
        "sxtab16 r7, r2, r7, ror #8\n\t"
        "str r5, [r3, lr]\n\t"
        "str r6, [r3, r9]\n\t"
        "str r7, [r3, r10]\n\t"
        "str r4, [r3], #4\n\t"
        "cmp r3, r11\n\t"
        "bne 1b\n\t"
        "pop {r4-r11, pc}\n\t");
}

/* ---- expansion of a whole row, columns checked (small rows): per pair, each column's word or
 * the pad word (unsigned column < width), then as dw_expand_pairs. */
typedef struct {
    const int8_t *src;  /* column a0 of the row, channel c0 (may lie outside the row) */
    int32_t cstride;    /* bytes between columns */
    int32_t off2;       /* offset in both halfwords */
    int32_t *dst;       /* channel 0's pair 0 */
    int32_t a0;         /* column of pair 0's first element (-pad) */
    int32_t width;      /* columns in the row */
    uint32_t padw;      /* a word of -offset bytes (expands to 0) */
    int32_t gstride;    /* bytes between channels' rows */
    int32_t *dend;      /* dst after the last pair */
} dw_expand_all_ctx;

__attribute__((naked)) static void dw_expand_all(const dw_expand_all_ctx *c)
{
    (void)c;
    __asm volatile(
        "push {r4-r11, lr}\n\t"
        "add r7, r0, #32\n\t"
        "ldr lr, [r7]\n\t"                          /* dend */
        "ldmia r0, {r0, r1, r2, r3, r4, r5, r6, r11}\n\t" /* src C off2 dst a0 w padw gs */
        "add r12, r11, r11\n\t"
        "1:\n\t"
        "cmp r4, r5\n\t"
        "ite lo\n\t"
        "ldrlo r7, [r0]\n\t"
        "movhs r7, r6\n\t"
        "add r8, r4, #1\n\t"
        "cmp r8, r5\n\t"
        "ite lo\n\t"
        "ldrlo r8, [r0, r1]\n\t"
        "movhs r8, r6\n\t"
        "add r0, r0, r1, lsl #1\n\t"
        "add r4, r4, #2\n\t"
        "pkhbt r9, r7, r8, lsl #16\n\t"
        "pkhtb r10, r8, r7, asr #16\n\t"
        "sxtab16 r7, r2, r9\n\t"
        "sxtab16 r8, r2, r9, ror #8\n\t"
        "sxtab16 r9, r2, r10\n\t"
        "sxtab16 r10, r2, r10, ror #8\n\t"
        "str r8, [r3, r11]\n\t"
        "str r7, [r3], #4\n\t"
        "add r7, r3, r12\n\t"
        "str r9, [r7, #-4]\n\t"
        "add r7, r7, r11\n\t"
        "str r10, [r7, #-4]\n\t"
        "cmp r3, lr\n\t"
        "bne 1b\n\t"
        "pop {r4-r11, pc}\n\t");
}

/* ---- C orchestration */

#define TB_DW_WT 78 /* words of one channel's weights: (2k - 1) rows x nw, at most 13 x 6 */

typedef struct {
    int32_t ring[TB_DW_RING_WORDS];
    int32_t wt[TB_DW_GROUP][TB_DW_WT]; /* weight rows 0..k-1 then 0..k-2 again, nw words each */
    int32_t rq[TB_DW_GROUP][4];        /* 2 bias, M, K, e */
    int8_t ylast[(TB_DW_PAIRS_3 * 2 + 2) * TB_DW_GROUP];
    int32_t held[7];                   /* input row each slot holds */
} dw_work;

#define PACK(lo, hi) (int32_t)(((uint32_t)(lo) & 0xFFFFu) | ((uint32_t)(hi) << 16))

/* The weights of channels c..c+3 (doubled), each as the assembly for (k, stride) reads them:
 * per kernel row nw words (k = 3: E0 O1; stride 1: E0..E(h-1) O1..Oh; stride 2: E0..E(h-1) Oh),
 * rows 0..k-1 (then 0..k-2 again for the ring). The four channels' weights of one tap are one
 * word; SXTB16 splits it into channels (0, 2) and (1, 3), PKHBT / PKHTB pair two taps per
 * channel. */
static void dw_weights4(const int8_t *w, int32_t k, int32_t s, int32_t ch, int32_t c, int32_t nw,
                        int32_t (*out)[TB_DW_WT], int rotate)
{
    const int32_t h = (k - 1) / 2;
    for (int32_t ky = 0; ky < k; ky++) {
        uint32_t ev[9], od[9]; /* tap kx at [kx + 1]; taps -1 and k are 0 */
        ev[0] = od[0] = ev[k + 1] = od[k + 1] = 0;
        for (int32_t kx = 0; kx < k; kx++) {
            const uint32_t v = tb_read32(w + (ky * k + kx) * ch + c);
            const uint32_t e = (uint32_t)__sxtb16(v), o = (uint32_t)tb_sxtb16_ror8(v);
            ev[kx + 1] = __sadd16(e, e);
            od[kx + 1] = __sadd16(o, o);
        }
        int32_t n = ky * nw;
        /* the word of taps (a, b) for the four channels */
#define PAIR(a, b)                                                   \
    do {                                                             \
        out[0][n] = (int32_t)tb_pack_lo(ev[(a) + 1], ev[(b) + 1]);   \
        out[2][n] = (int32_t)tb_pack_hi(ev[(a) + 1], ev[(b) + 1]);   \
        out[1][n] = (int32_t)tb_pack_lo(od[(a) + 1], od[(b) + 1]);   \
        out[3][n] = (int32_t)tb_pack_hi(od[(a) + 1], od[(b) + 1]);   \
        n++;                                                         \
    } while (0)
        if (k == 3) {
            PAIR(0, 1); /* E0 */
            PAIR(1, 2); /* O1 */
            continue;
        }
        for (int32_t j = 0; j < h; j++) PAIR(2 * j, 2 * j + 1); /* E_j */
        if (s == 1)
            for (int32_t j = 1; j <= h; j++) PAIR(2 * j - 1, 2 * j); /* O_j */
        else
            PAIR(2 * h - 1, 2 * h); /* O_h */
#undef PAIR
    }
    if (rotate) /* the ring's rows rotate: rows 0..k-2 again after row k-1 */
        for (int32_t g = 0; g < TB_DW_GROUP; g++)
            for (int32_t i = 0; i < (k - 1) * nw; i++) out[g][k * nw + i] = out[g][i];
}

/* input row iy of channels c..c+3, pairs [0, n_pairs) of the padded row (column = ix + pad),
 * channel g at dst + g * gstride */
static void dw_expand_row(const int8_t *x, tb_shape in, int32_t c, int32_t iy, int32_t pad,
                          int32_t offset, int32_t n_pairs, int32_t *dst, int32_t gstride)
{
    if (iy < 0 || iy >= in.h) {
        for (int32_t g = 0; g < TB_DW_GROUP; g++)
            for (int32_t m = 0; m < n_pairs; m++) dst[g * gstride + m] = 0;
        return;
    }
    const int32_t off2 = PACK(offset, offset);
    const uint32_t padw = (uint8_t)(-offset) * 0x01010101u; /* expands to 0 */
    const int8_t *xr = x + iy * in.w * in.c + c;
    /* interior pairs [m0, m1): 2m - pad >= 0 and 2m + 1 - pad < in.w */
    const int32_t m0 = (pad + 1) / 2 < n_pairs ? (pad + 1) / 2 : n_pairs;
    int32_t m1 = (in.w + pad) / 2;
    if (m1 > n_pairs) m1 = n_pairs;
    if (m1 < m0) m1 = m0;
    if (m1 > m0) {
        dw_expand_ctx e;
        e.src = xr + (2 * m0 - pad) * in.c;
        e.cstride = in.c;
        e.off2 = off2;
        e.dst = dst + m0;
        e.dend = dst + m1;
        e.gstride = 4 * gstride;
        dw_expand_pairs(&e);
    }
    for (int32_t m = 0; m < n_pairs; m++) {
        if (m == m0) m = m1; /* the interior is done */
        if (m >= n_pairs) break;
        const int32_t a = 2 * m - pad;
        const uint32_t va = (uint32_t)a < (uint32_t)in.w ? tb_read32(xr + a * in.c) : padw;
        const uint32_t vb =
            (uint32_t)(a + 1) < (uint32_t)in.w ? tb_read32(xr + (a + 1) * in.c) : padw;
        const uint32_t lo = tb_pack_lo(va, vb); /* [c0(a) c1(a) c0(b) c1(b)] */
        const uint32_t hi = tb_pack_hi(va, vb); /* [c2(a) c3(a) c2(b) c3(b)] */
        dst[m] = __sxtab16(off2, lo);
        dst[gstride + m] = tb_sxtab16_ror8(off2, lo);
        dst[2 * gstride + m] = __sxtab16(off2, hi);
        dst[3 * gstride + m] = tb_sxtab16_ror8(off2, hi);
    }
}

static int depthwise_dsp(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                         const int8_t *w, const int32_t *bias, const int32_t *mult,
                         const int32_t *shift, int8_t *y)
{
    const int32_t k = p->kernel_h, s = p->stride_h, ch = in.c, pad = p->pad_left;
    const int32_t h = (k - 1) / 2;
    const int32_t steps = (out.w + 1) / 2; /* two outputs per step; an odd row computes one more */
    /* pairs read: stride 1 up to steps - 1 + h, stride 2 up to 2 (steps - 1) + h + 1 */
    const int32_t n_pairs = s == 1 ? steps + h : 2 * steps + h;
    const int32_t nw = k == 3 ? 2 : (s == 1 ? 2 * h : h + 1);
    const int odd = out.w & 1;
    /* plane mode: every padded input row of the group at once (small planes) */
    const int32_t plane_rows = (out.h - 1) * s + k;
    const int plane = n_pairs <= TB_DW_PAIRS_N &&
                      TB_DW_GROUP * plane_rows * TB_DW_PAIRS_N <= TB_DW_RING_WORDS;
    const int32_t slot_pairs = plane ? TB_DW_PAIRS_N
                                     : k == 3 ? TB_DW_PAIRS_3 : (k == 5 ? TB_DW_PAIRS_5 : TB_DW_PAIRS_7);
    void (*run)(const dw_row_ctx *);
    if (plane)
        run = k == 3 ? (s == 1 ? dw3s1n : dw3s2n) : k == 5 ? (s == 1 ? dw5s1n : dw5s2n)
                                                           : (s == 1 ? dw7s1n : dw7s2n);
    else
        run = k == 3 ? (s == 1 ? dw3s1 : dw3s2) : k == 5 ? (s == 1 ? dw5s1 : dw5s2)
                                                         : (s == 1 ? dw7s1 : dw7s2);
    if (n_pairs > slot_pairs || 2 * steps > 2 * TB_DW_PAIRS_3 + 2) return 0;
    dw_work wk;
    dw_row_ctx ctx;
    ctx.steps = 4 * (s == 1 ? steps : 2 * steps);
    ctx.p = wk.ring;
    ctx.nch = TB_DW_GROUP;
    ctx.gstride = 4 * (plane ? plane_rows : k) * slot_pairs;
    ctx.wstride = 4 * TB_DW_WT;
    ctx.prow = 4 * s * slot_pairs;
    ctx.yrow = out.w * ch;
    for (int32_t c0 = 0; c0 + TB_DW_GROUP <= ch; c0 += TB_DW_GROUP) {
        dw_weights4(w, k, s, ch, c0, nw, wk.wt, !plane);
        for (int32_t g = 0; g < TB_DW_GROUP; g++) {
            const int32_t c = c0 + g;
            wk.rq[g][0] = bias ? 2 * bias[c] : 0;
            wk.rq[g][1] = mult[c];
            wk.rq[g][2] = tb_dsp_rounding(-shift[c], p->output_offset);
            wk.rq[g][3] = -shift[c];
        }
        if (plane) {
            dw_expand_all_ctx e;
            e.cstride = ch;
            e.off2 = PACK(p->input_offset, p->input_offset);
            e.a0 = -pad;
            e.width = in.w;
            e.padw = (uint8_t)(-p->input_offset) * 0x01010101u;
            e.gstride = 4 * plane_rows * slot_pairs;
            for (int32_t r = 0; r < plane_rows; r++) {
                const int32_t iy = r - p->pad_top;
                int32_t *row = wk.ring + r * slot_pairs;
                if (iy < 0 || iy >= in.h) {
                    for (int32_t g = 0; g < TB_DW_GROUP; g++)
                        for (int32_t m = 0; m < n_pairs; m++) row[g * plane_rows * slot_pairs + m] = 0;
                    continue;
                }
                e.src = x + (iy * in.w - pad) * ch + c0;
                e.dst = row;
                e.dend = row + n_pairs;
                dw_expand_all(&e);
            }
            ctx.wts = wk.wt[0];
            ctx.ystep = ch;
            ctx.rq = wk.rq[0];
            ctx.y = y + c0;
            ctx.nrows = out.h - odd; /* an odd row writes one output past its end */
            if (ctx.nrows) run(&ctx);
            if (odd) {
                ctx.p = wk.ring + (out.h - 1) * s * slot_pairs;
                ctx.y = wk.ylast;
                ctx.ystep = TB_DW_GROUP;
                ctx.nrows = 1;
                ctx.rq = wk.rq[0];
                run(&ctx);
                ctx.p = wk.ring;
                for (int32_t ox = 0; ox < out.w; ox++)
                    for (int32_t g = 0; g < TB_DW_GROUP; g++)
                        y[((out.h - 1) * out.w + ox) * ch + c0 + g] = wk.ylast[ox * TB_DW_GROUP + g];
            }
            continue;
        }
        ctx.nrows = 1;
        for (int32_t i = 0; i < k; i++) wk.held[i] = INT32_MIN;
        int32_t base = ((-p->pad_top % k) + k) % k; /* slot of the output row's first input row */
        for (int32_t oy = 0; oy < out.h; oy++) {
            const int32_t iy0 = oy * s - p->pad_top;
            for (int32_t ky = 0, sl = base; ky < k; ky++, sl = sl + 1 == k ? 0 : sl + 1) {
                if (wk.held[sl] != iy0 + ky) {
                    dw_expand_row(x, in, c0, iy0 + ky, pad, p->input_offset, n_pairs,
                                  wk.ring + sl * slot_pairs, k * slot_pairs);
                    wk.held[sl] = iy0 + ky;
                }
            }
            /* slot t holds kernel row (t - base) mod k: start at weight row (k - base) mod k */
            ctx.wts = wk.wt[0] + (base ? k - base : 0) * nw;
            base += s;
            if (base >= k) base -= k;
            /* an odd last row would write one output past y: through ylast */
            const int last = odd && oy == out.h - 1;
            ctx.y = last ? wk.ylast : y + oy * out.w * ch + c0;
            ctx.ystep = last ? TB_DW_GROUP : ch;
            ctx.rq = wk.rq[0];
            run(&ctx);
            if (last)
                for (int32_t ox = 0; ox < out.w; ox++)
                    for (int32_t g = 0; g < TB_DW_GROUP; g++)
                        y[(oy * out.w + ox) * ch + c0 + g] = wk.ylast[ox * TB_DW_GROUP + g];
        }
    }
    return 1;
}
#undef PACK
#endif

tb_status tb_depthwise_conv2d_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                 tb_shape out, const int8_t *w, const int32_t *bias,
                                 const int32_t *mult, const int32_t *shift, int8_t *y)
{
    if (!tb_conv_geometry_ok(p, in, out) || in.c != out.c) return TB_ERR_ARG;
#if TB_DSP
    /* square odd kernels 3, 5, 7, equal strides 1 or 2, equal padding: channels in groups of 4,
     * the last in.c % 4 by the plain path */
    const int32_t k = p->kernel_h, c4 = in.c & ~(TB_DW_GROUP - 1);
    if (k == p->kernel_w && (k == 3 || k == 5 || k == 7) && p->stride_h == p->stride_w &&
        (p->stride_h == 1 || p->stride_h == 2) && p->pad_top == p->pad_left && c4 > 0 &&
        tb_dsp_requant_ok(bias, shift, in.c, k * k) &&
        depthwise_dsp(p, in, x, out, w, bias, mult, shift, y)) {
        if (p->act_min != -128 || p->act_max != 127)
            for (int32_t i = 0; i < out.h * out.w * out.c; i++)
                y[i] = (int8_t)tb_clamp_i32(y[i], p->act_min, p->act_max);
        if (c4 < in.c) depthwise_plain(p, in, x, out, w, bias, mult, shift, y, c4, in.c);
        return TB_OK;
    }
#endif
    depthwise_plain(p, in, x, out, w, bias, mult, shift, y, 0, in.c);
    return TB_OK;
}
