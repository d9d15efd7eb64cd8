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
                acc = tb_requantize_as(p->rounding, acc, mult[c], shift[c]) + p->output_offset;
                y[(oy * out.w + ox) * ch + c] = (int8_t)tb_clamp_i32(acc, p->act_min, p->act_max);
            }
        }
    }
}

#if TB_DSP
/* DSP paths (docs/kernels.md, "Optimized kernels"), four channels at a time; the last in.c % 4
 * channels take the plain path.
 *
 * Pairs along x (3 x 3 everywhere; 5 x 5 and 7 x 7 on planes wider than TB_DWS_SMALL outputs):
 * each input row the group needs is expanded once into a band of rows on the stack: per channel,
 * the padded row as int16 pairs R[m] = [x(2m) + off, x(2m + 1) + off] (padding expands to 0). With
 * h = (k - 1) / 2, E_j = [w(2j), w(2j + 1)], O_j = [w(2j - 1), w(2j)]:
 *   stride 1, outputs 2m, 2m + 1:
 *     out(2m)     = sum_{j<h} SMLAD(R[m + j], E_j) + SMLABT(R[m + h], O_h)
 *     out(2m + 1) = SMLATB(R[m], E_0) + sum_{1<=j<=h} SMLAD(R[m + j], O_j)
 *   stride 2, outputs m, m + 1: out(m) = sum_{j<h} SMLAD(R[m + j], E_j) + SMLABT(R[m + h], O_h)
 * (k + 1 instructions per 2k MACs at stride 1). 3 x 3 runs two output rows per pass (dw2*); the
 * one-row kernels (dw3* / dw5* / dw7*) run 5 x 5, 7 x 7, odd widths and a last odd row. Rows of the
 * band are slots of a fixed size per kernel (assembly offsets); when the band is used up its last
 * rows move to the top. Weights are doubled, so the accumulators are 2 * acc as tb_dsp_requant
 * wants.
 *
 * Small planes, 5 x 5 and 7 x 7 (depthwise_small, below): taps inside the input only. */
#define TB_DW_GROUP 4
#define TB_DW_BAND 1152                       /* words of the band: 4 channels x rows x slot */
#define TB_DW_PAIRS_3 48                      /* pairs (words) per slot */
#define TB_DW_PAIRS_3S 12                     /* 3 x 3, narrow rows */
#define TB_DW_PAIRS_5 36
#define TB_DW_PAIRS_7 20
#define TB_DW_ROWB_3 192                      /* bytes per slot (assembly offsets) */
#define TB_DW_ROWB_3S 48
#define TB_DW_ROWB_5 144
#define TB_DW_ROWB_7 80
#define TB_DW_STR(x) #x
#define TB_DW_XSTR(x) TB_DW_STR(x)

/* output rows of the group's channels */
typedef struct {
    const int32_t *p;    /* channel 0: the band row of kernel row 0, pair 0 of the first output row */
    int32_t steps;       /* bytes the data pointer moves over one output row */
    const int32_t *wts;  /* channel 0: weights of kernel row 0 (rows follow) */
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
#define DW_REQUANT2(REQ)                                                             \
    "ldrd r2, r3, [sp, #20]\n\t"                                                     \
    "ldr r4, [sp, #28]\n\t"                                                          \
    "ldrd r5, r6, [sp, #4]\n\t"                                                      \
    REQ("r7", "r0", "r2", "r3", "r7")                                                \
    "asr r7, r7, r4\n\t"                                                             \
    "ssat r7, #8, r7\n\t"                                                            \
    "strb r7, [r5]\n\t"                                                              \
    REQ("r7", "r1", "r2", "r3", "r7")                                                \
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
#define DW7S1_BODY(B, REQ) DW_INIT2 DW7S1_ROW(RO(B, 0)) DW7S1_ROW(RO(B, 1)) DW7S1_ROW(RO(B, 2)) \
    DW7S1_ROW(RO(B, 3)) DW7S1_ROW(RO(B, 4)) DW7S1_ROW(RO(B, 5)) DW7S1_ROW(RO(B, 6))      \
    DW_REQUANT2(REQ) DW_STEPEND(4)
#define DW7S2_BODY(B, REQ) DW_INIT2 DW7S2_ROW(RO(B, 0)) DW7S2_ROW(RO(B, 1)) DW7S2_ROW(RO(B, 2)) \
    DW7S2_ROW(RO(B, 3)) DW7S2_ROW(RO(B, 4)) DW7S2_ROW(RO(B, 5)) DW7S2_ROW(RO(B, 6))      \
    DW_REQUANT2(REQ) DW_STEPEND(8)
#define DW5S1_BODY(B, REQ) DW_INIT2 DW5S1_ROW(RO(B, 0)) DW5S1_ROW(RO(B, 1)) DW5S1_ROW(RO(B, 2)) \
    DW5S1_ROW(RO(B, 3)) DW5S1_ROW(RO(B, 4)) DW_REQUANT2(REQ) DW_STEPEND(4)
#define DW5S2_BODY(B, REQ) DW_INIT2 DW5S2_ROW(RO(B, 0)) DW5S2_ROW(RO(B, 1)) DW5S2_ROW(RO(B, 2)) \
    DW5S2_ROW(RO(B, 3)) DW5S2_ROW(RO(B, 4)) DW_REQUANT2(REQ) DW_STEPEND(8)

/* k = 3: the six weight words (E0, O1 of each slot) stay in r4-r9; y r10, ystep r11, bias r12 */
#define DW3_ROWSETUP                                                                 \
    "ldr r0, [sp, #0]\n\t"                                                           \
    "ldmia r0, {r4, r5, r6, r7, r8, r9}\n\t"                                         \
    "ldrd r10, r11, [sp, #4]\n\t"                                                    \
    "ldr r12, [sp, #16]\n\t"
#define DW3_REQUANT2(REQ)                                                            \
    "ldrd r2, r3, [sp, #20]\n\t"                 /* M K */                           \
    REQ("r12", "r0", "r2", "r3", "r12")                                              \
    "ldr r0, [sp, #28]\n\t"                      /* e */                             \
    "asr r12, r12, r0\n\t"                                                           \
    "ssat r12, #8, r12\n\t"                                                          \
    "strb r12, [r10]\n\t"                                                            \
    REQ("r12", "r1", "r2", "r3", "r12")                                              \
    "asr r12, r12, r0\n\t"                                                           \
    "ssat r12, #8, r12\n\t"                                                          \
    "strb r12, [r10, r11]\n\t"                                                       \
    "add r10, r10, r11, lsl #1\n\t"                                                  \
    "ldr r12, [sp, #16]\n\t"                     /* bias */
#define DW3S1_BODY(B, REQ)                                                           \
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
    DW3_REQUANT2(REQ)                                                                \
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
#define DW3S2_BODY(B, REQ)                                                           \
    "mov r0, r12\n\t"                                                                \
    "mov r1, r12\n\t"                                                                \
    DW3S2_ROW("0", "r4", "r5")                                                       \
    DW3S2_ROW(RO(B, 1), "r6", "r7")                                                  \
    DW3S2_ROW(RO(B, 2), "r8", "r9")                                                  \
    "add lr, lr, #8\n\t"                                                             \
    DW3_REQUANT2(REQ)                                                                \
    "ldr r2, [sp, #12]\n\t"                                                          \
    "cmp lr, r2\n\t"                                                                 \
    "bne 1b\n\t"

#define DW_FUNCTION(NAME, SETUP, BODY)                                               \
    __attribute__((naked)) static void NAME(const dw_row_ctx *c)                     \
    {                                                                                \
        (void)c;                                                                     \
        __asm volatile(DW_PROLOGUE SETUP "1:\n\t" BODY DW_ROWEND DW_NEXT);           \
    }
/* each kernel once per rounding (tb_dsp.h: TB_DSP_REQ_*) */
#define DW_FUNCTIONS(NAME, SETUP, BODY, B)                                           \
    DW_FUNCTION(NAME, SETUP, BODY(B, TB_DSP_REQ_TFLITE))                             \
    DW_FUNCTION(NAME##_single, SETUP, BODY(B, TB_DSP_REQ_SINGLE))
DW_FUNCTIONS(dw3s1, DW3_ROWSETUP, DW3S1_BODY, TB_DW_ROWB_3)
DW_FUNCTIONS(dw3s2, DW3_ROWSETUP, DW3S2_BODY, TB_DW_ROWB_3)
DW_FUNCTIONS(dw3s1s, DW3_ROWSETUP, DW3S1_BODY, TB_DW_ROWB_3S)
DW_FUNCTIONS(dw3s2s, DW3_ROWSETUP, DW3S2_BODY, TB_DW_ROWB_3S)
DW_FUNCTIONS(dw5s1, "", DW5S1_BODY, TB_DW_ROWB_5)
DW_FUNCTIONS(dw5s2, "", DW5S2_BODY, TB_DW_ROWB_5)
DW_FUNCTIONS(dw7s1, "", DW7S1_BODY, TB_DW_ROWB_7)
DW_FUNCTIONS(dw7s2, "", DW7S2_BODY, TB_DW_ROWB_7)

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

/* The same, two pairs an iteration with one STRD per channel (an odd count starts with one pair):
 * 16 values in 24 instructions. Same context; dst..dend at least one pair. */
__attribute__((naked)) static void dw_expand_pairs2(const dw_expand_ctx *c)
{
    (void)c;
    __asm volatile(
        "push {r4-r11, lr}\n\t"
        "ldmia r0, {r0, r1, r2, r9, r10, r11}\n\t" /* src C off2 dst dend gstride */
        "mov r3, r10\n\t"
        "add r10, r9, r11\n\t"
        "add r12, r10, r11, lsl #1\n\t"
        "add r11, r10, r11\n\t"
        "sub r4, r3, r9\n\t"
        "tst r4, #4\n\t"
        "beq 2f\n\t"
        "ldr r4, [r0]\n\t"
        "ldr r5, [r0, r1]\n\t"
        "add r0, r0, r1, lsl #1\n\t"
        "pkhbt r6, r4, r5, lsl #16\n\t"
        "pkhtb r7, r5, r4, asr #16\n\t"
        "sxtab16 r4, r2, r6\n\t"
        "sxtab16 r5, r2, r6, ror #8\n\t"
        "sxtab16 r6, r2, r7\n\t"
        "sxtab16 r7, r2, r7, ror #8\n\t"
        "str r4, [r9], #4\n\t"
        "str r5, [r10], #4\n\t"
        "str r6, [r11], #4\n\t"
        "str r7, [r12], #4\n\t"
        "2:\n\t"
        "cmp r9, r3\n\t"
        "beq 9f\n\t"
        "1:\n\t"
        "ldr r4, [r0]\n\t"
        "ldr r5, [r0, r1]\n\t"
        "add r0, r0, r1, lsl #1\n\t"
        "ldr r6, [r0]\n\t"
        "ldr r7, [r0, r1]\n\t"
        "add r0, r0, r1, lsl #1\n\t"
        "pkhtb r8, r5, r4, asr #16\n\t"
        "pkhbt r4, r4, r5, lsl #16\n\t"
        "pkhtb r5, r7, r6, asr #16\n\t"
        "pkhbt r6, r6, r7, lsl #16\n\t"
        "sxtab16 r7, r2, r4\n\t"
        "sxtab16 lr, r2, r6\n\t"
        "strd r7, lr, [r9], #8\n\t"
        "sxtab16 r7, r2, r4, ror #8\n\t"
        "sxtab16 lr, r2, r6, ror #8\n\t"
        "strd r7, lr, [r10], #8\n\t"
        "sxtab16 r7, r2, r8\n\t"
        "sxtab16 lr, r2, r5\n\t"
        "strd r7, lr, [r11], #8\n\t"
        "sxtab16 r7, r2, r8, ror #8\n\t"
        "sxtab16 lr, r2, r5, ror #8\n\t"
        "strd r7, lr, [r12], #8\n\t"
        "cmp r9, r3\n\t"
        "bne 1b\n\t"
        "9:\n\t"
        "pop {r4-r11, pc}\n\t");
}

/* ---- C orchestration */

#define TB_DW_WT 42 /* words of one channel's weights: k rows x nw, at most 7 x 6 */

#define PACK(lo, hi) (int32_t)(((uint32_t)(lo) & 0xFFFFu) | ((uint32_t)(hi) << 16))

/* The weights of channels c..c+3 (doubled), each as the assembly for (k, stride) reads them:
 * per kernel row nw words (k = 3: E0 O1; stride 1: E0..E(h-1) O1..Oh; stride 2: E0..E(h-1) Oh),
 * rows 0..k-1. The four channels' weights of one tap are one
 * word; SXTB16 splits it into channels (0, 2) and (1, 3), PKHBT / PKHTB pair two taps per
 * channel. */
static void dw_weights4(const int8_t *w, int32_t k, int32_t s, int32_t ch, int32_t c, int32_t nw,
                        int32_t (*out)[TB_DW_WT])
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
}

/* input row iy of channels c..c+3, pairs [0, n_pairs) of the padded row (column = ix + pad),
 * channel g at dst + g * gstride: the padding pairs and the two edge pairs (one padding column)
 * written directly, the interior by dw_expand_pairs2 */
TB_INLINE void dw_expand_row2(const int8_t *x, tb_shape in, int32_t c, int32_t iy, int32_t pad,
                           int32_t offset, int32_t n_pairs, int32_t *dst, int32_t gstride)
{
    int32_t *d1 = dst + gstride, *d2 = d1 + gstride, *d3 = d2 + gstride;
    int32_t m = 0;
    if (iy >= 0 && iy < in.h) {
        const int32_t off2 = PACK(offset, offset);
        const int8_t *xr = x + iy * in.w * in.c + c;
        if (pad >= 2 && n_pairs > 0) {
            m = pad / 2 < n_pairs ? pad / 2 : n_pairs;
            tb_dsp_zero4(dst, 4 * gstride, m);
        }
        int32_t a = 0; /* the next input column */
        if ((pad & 1) && m < n_pairs) { /* [padding, x(0)] */
            const uint32_t v = tb_read32(xr);
            const uint32_t e = (uint32_t)__sxtab16(off2, v), o = (uint32_t)tb_sxtab16_ror8(off2, v);
            dst[m] = (int32_t)(e << 16), d2[m] = (int32_t)(e & 0xFFFF0000u);
            d1[m] = (int32_t)(o << 16), d3[m] = (int32_t)(o & 0xFFFF0000u);
            m++, a = 1;
        }
        int32_t n = (in.w - a) / 2; /* interior pairs */
        if (n > n_pairs - m) n = n_pairs - m;
        if (n > 0) {
            dw_expand_ctx e;
            e.src = xr + a * in.c;
            e.cstride = in.c;
            e.off2 = off2;
            e.dst = dst + m;
            e.dend = dst + m + n;
            e.gstride = 4 * gstride;
            dw_expand_pairs2(&e);
            m += n, a += 2 * n;
        }
        if (a == in.w - 1 && m < n_pairs) { /* [x(in.w - 1), padding] */
            const uint32_t v = tb_read32(xr + a * in.c);
            const uint32_t e = (uint32_t)__sxtab16(off2, v), o = (uint32_t)tb_sxtab16_ror8(off2, v);
            dst[m] = (int32_t)(e & 0xFFFFu), d2[m] = (int32_t)(e >> 16);
            d1[m] = (int32_t)(o & 0xFFFFu), d3[m] = (int32_t)(o >> 16);
            m++;
        }
    }
    if (m < n_pairs) tb_dsp_zero4(dst + m, 4 * gstride, n_pairs - m);
}

/* ---- 3 x 3: two output rows per pass.
 * A step computes a 2 x 2 tile of one channel (output rows oy, oy + 1, columns 2m, 2m + 1 at
 * stride 1; m, m + 1 at stride 2) from the 4 (stride 1) or 5 (stride 2) input rows under it:
 * every loaded input pair serves both output rows, and the requantization constants, the output
 * pointer and the loop end come in one LDM for four outputs. With the six weight words and the
 * bias in registers, stride 1 is 4 LDRDs + 24 multiplies + 28 for four requantizations, stores
 * and the loop: 14 instructions an output (the one-row kernels above: 16). Per channel: {E0, O1}
 * of the three kernel rows and 2 bias (one LDM), and {2 bias, M, K, e} as the one-row kernels read
 * them. */

typedef struct {
    const int32_t *p;      /* channel 0: row 0 of the first tile, pair 0 */
    int32_t steps;         /* bytes the data pointer moves over an output row */
    const int32_t *wb;     /* channel 0: {E0 O1 x 3, 2 bias}, channels TB_DW_WT words apart */
    int8_t *y;             /* channel 0: first output */
    int32_t ystep;         /* bytes between outputs along x */
    int32_t yrow;          /* bytes between output rows */
    int32_t gstride;       /* bytes between channels' rows */
    int32_t tiles;         /* pairs of output rows */
    int32_t prow;          /* bytes between tiles' data (2 stride rows) */
    const int32_t *rq;     /* channel 0: {2 bias, M, K, e}, channels 4 words apart */
} dw2_ctx;

/* frame: 0 M, 4 K, 8 e, 12 y, 16 ystep, 20 yrow, 24 end (one LDM for the requantization), 28
 * weights of the channel, 32 data of the tile row, 36 y of the tile row, 40 tiles left, 44 channels
 * left, 48 data of the channel, 52 steps, 56 rq of the channel, 60 y of the channel, 64 gstride,
 * 68 tiles, 72 prow */
#define DW2_PROLOGUE                                                                   \
    "push {r4-r11, lr}\n\t"                                                            \
    "sub sp, sp, #80\n\t"                                                              \
    "ldmia r0, {r1, r2, r3, r4, r5, r6, r7, r8, r9, r10}\n\t"                          \
    "strd r1, r2, [sp, #48]\n\t"     /* p, steps */                                    \
    "str r3, [sp, #28]\n\t"          /* wb */                                          \
    "str r10, [sp, #56]\n\t"         /* rq */                                          \
    "str r4, [sp, #60]\n\t"          /* y */                                           \
    "strd r5, r6, [sp, #16]\n\t"     /* ystep, yrow */                                 \
    "strd r7, r8, [sp, #64]\n\t"     /* gstride, tiles */                              \
    "str r9, [sp, #72]\n\t"          /* prow */                                        \
    "mov r0, #4\n\t"                                                                   \
    "str r0, [sp, #44]\n\t"                                                            \
    "0:\n\t"                                                                           \
    "ldr r0, [sp, #56]\n\t"                                                            \
    "ldmia r0, {r0, r1, r2, r3}\n\t" /* 2 bias, M, K, e */                             \
    "stmia sp, {r1, r2, r3}\n\t"                                                       \
    "ldrd r0, r1, [sp, #48]\n\t"                                                       \
    "str r0, [sp, #32]\n\t"                                                            \
    "ldr r0, [sp, #60]\n\t"                                                            \
    "str r0, [sp, #36]\n\t"                                                            \
    "ldr r0, [sp, #68]\n\t"                                                            \
    "str r0, [sp, #40]\n\t"                                                            \
    "8:\n\t"                                                                           \
    "ldrd lr, r1, [sp, #32]\n\t"     /* data, y of the tile row */                     \
    "str r1, [sp, #12]\n\t"                                                            \
    "ldr r0, [sp, #52]\n\t"                                                            \
    "add r0, r0, lr\n\t"                                                               \
    "str r0, [sp, #24]\n\t"                                                            \
    "ldr r0, [sp, #28]\n\t"                                                            \
    "ldmia r0, {r4, r5, r6, r7, r8, r9, r12}\n\t"                                      \
    "1:\n\t"
/* four outputs r0 (y), r1 (y + ystep), r2 (y + yrow), r3 (y + yrow + ystep), then the loop */
#define DW2_REQUANT4(REQ)                                                               \
    "ldmia sp, {r4, r5, r6, r7, r8, r9, r10}\n\t"                                      \
    REQ("r0", "r0", "r4", "r5", "r11")                                                 \
    "asr r0, r0, r6\n\t"                                                               \
    "ssat r0, #8, r0\n\t"                                                              \
    "strb r0, [r7]\n\t"                                                                \
    REQ("r1", "r1", "r4", "r5", "r11")                                                 \
    "asr r1, r1, r6\n\t"                                                               \
    "ssat r1, #8, r1\n\t"                                                              \
    "strb r1, [r7, r8]\n\t"                                                            \
    "add r12, r7, r9\n\t"                                                              \
    REQ("r2", "r2", "r4", "r5", "r11")                                                 \
    "asr r2, r2, r6\n\t"                                                               \
    "ssat r2, #8, r2\n\t"                                                              \
    "strb r2, [r12]\n\t"                                                               \
    REQ("r3", "r3", "r4", "r5", "r11")                                                 \
    "asr r3, r3, r6\n\t"                                                               \
    "ssat r3, #8, r3\n\t"                                                              \
    "strb r3, [r12, r8]\n\t"                                                           \
    "add r7, r7, r8, lsl #1\n\t"                                                       \
    "str r7, [sp, #12]\n\t"                                                            \
    "cmp lr, r10\n\t"                                                                  \
    "ldr r11, [sp, #28]\n\t"                                                           \
    "ldmia r11, {r4, r5, r6, r7, r8, r9, r12}\n\t"                                     \
    "bne 1b\n\t"
#define DW2_EPILOGUE                                                                   \
    "ldrd r0, r1, [sp, #32]\n\t"                                                       \
    "ldr r2, [sp, #72]\n\t"                                                            \
    "add r0, r0, r2\n\t"                                                               \
    "ldr r2, [sp, #20]\n\t"                                                            \
    "add r1, r1, r2, lsl #1\n\t"                                                       \
    "strd r0, r1, [sp, #32]\n\t"                                                       \
    "ldr r0, [sp, #40]\n\t"                                                            \
    "subs r0, r0, #1\n\t"                                                              \
    "str r0, [sp, #40]\n\t"                                                            \
    "bne 8b\n\t"                                                                       \
    "ldr r0, [sp, #44]\n\t"                                                            \
    "subs r0, r0, #1\n\t"                                                              \
    "beq 9f\n\t"                                                                       \
    "str r0, [sp, #44]\n\t"                                                            \
    "ldrd r0, r1, [sp, #48]\n\t"                                                       \
    "ldr r2, [sp, #64]\n\t"                                                            \
    "add r0, r0, r2\n\t"                                                               \
    "str r0, [sp, #48]\n\t"                                                            \
    "ldr r0, [sp, #28]\n\t"                                                            \
    "add r0, r0, #(4 * " TB_DW_XSTR(TB_DW_WT) ")\n\t"                                  \
    "str r0, [sp, #28]\n\t"                                                            \
    "ldr r0, [sp, #56]\n\t"                                                            \
    "add r0, r0, #16\n\t"                                                              \
    "str r0, [sp, #56]\n\t"                                                            \
    "ldr r0, [sp, #60]\n\t"                                                            \
    "add r0, r0, #1\n\t"                                                               \
    "str r0, [sp, #60]\n\t"                                                            \
    "b 0b\n\t"                                                                         \
    "9:\n\t"                                                                           \
    "add sp, sp, #80\n\t"                                                              \
    "pop {r4-r11, pc}\n\t"

/* stride 1: rows 0..3 of the tile; E0 O1 of kernel rows 0, 1, 2 in r4-r9, bias r12; data r10 r11 */
#define DW2S1_TWO(E, O, A, B)                                                          \
    "smlad " A ", r10, " E ", " A "\n\t"                                               \
    "smlatb " B ", r10, " E ", " B "\n\t"                                              \
    "smlabt " A ", r11, " O ", " A "\n\t"                                              \
    "smlad " B ", r11, " O ", " B "\n\t"
#define DW2S1_STEP(ROWB)                                                               \
    "ldrd r10, r11, [lr], #4\n\t"                                                      \
    "smlad r0, r10, r4, r12\n\t"                                                       \
    "smlatb r1, r10, r4, r12\n\t"                                                      \
    "smlabt r0, r11, r5, r0\n\t"                                                       \
    "smlad r1, r11, r5, r1\n\t"                                                        \
    "ldrd r10, r11, [lr, #(" TB_DW_XSTR(ROWB) "-4)]\n\t"                               \
    DW2S1_TWO("r6", "r7", "r0", "r1")                                                  \
    "smlad r2, r10, r4, r12\n\t"                                                       \
    "smlatb r3, r10, r4, r12\n\t"                                                      \
    "smlabt r2, r11, r5, r2\n\t"                                                       \
    "smlad r3, r11, r5, r3\n\t"                                                        \
    "ldrd r10, r11, [lr, #(2*" TB_DW_XSTR(ROWB) "-4)]\n\t"                             \
    DW2S1_TWO("r8", "r9", "r0", "r1")                                                  \
    DW2S1_TWO("r6", "r7", "r2", "r3")                                                  \
    "ldrd r10, r11, [lr, #(3*" TB_DW_XSTR(ROWB) "-4)]\n\t"                             \
    DW2S1_TWO("r8", "r9", "r2", "r3")
/* stride 2: rows 0..4; per row R[m], R[m+1] (r10 r11), then R[m+2] (r10) */
#define DW2S2_ROW(OFF, E, O, A, B)                                                     \
    "ldrd r10, r11, [lr, #(" OFF "-8)]\n\t"                                            \
    "smlad " A ", r10, " E ", " A "\n\t"                                               \
    "smlabt " A ", r11, " O ", " A "\n\t"                                              \
    "smlad " B ", r11, " E ", " B "\n\t"                                               \
    "ldr r10, [lr, #(" OFF ")]\n\t"                                                    \
    "smlabt " B ", r10, " O ", " B "\n\t"
#define DW2S2_STEP(ROWB)                                                               \
    "ldrd r10, r11, [lr], #8\n\t"                                                      \
    "smlad r0, r10, r4, r12\n\t"                                                       \
    "smlabt r0, r11, r5, r0\n\t"                                                       \
    "smlad r1, r11, r4, r12\n\t"                                                       \
    "ldr r10, [lr]\n\t"                                                                \
    "smlabt r1, r10, r5, r1\n\t"                                                       \
    DW2S2_ROW(TB_DW_XSTR(ROWB), "r6", "r7", "r0", "r1")                                \
    "ldrd r10, r11, [lr, #(2*" TB_DW_XSTR(ROWB) "-8)]\n\t"                             \
    "smlad r0, r10, r8, r0\n\t"                                                        \
    "smlabt r0, r11, r9, r0\n\t"                                                       \
    "smlad r1, r11, r8, r1\n\t"                                                        \
    "smlad r2, r10, r4, r12\n\t"                                                       \
    "smlabt r2, r11, r5, r2\n\t"                                                       \
    "smlad r3, r11, r4, r12\n\t"                                                       \
    "ldr r10, [lr, #(2*" TB_DW_XSTR(ROWB) ")]\n\t"                                     \
    "smlabt r1, r10, r9, r1\n\t"                                                       \
    "smlabt r3, r10, r5, r3\n\t"                                                       \
    DW2S2_ROW("3*" TB_DW_XSTR(ROWB), "r6", "r7", "r2", "r3")                           \
    DW2S2_ROW("4*" TB_DW_XSTR(ROWB), "r8", "r9", "r2", "r3")

#define DW2_FUNCTION(NAME, STEP, REQ)                                                  \
    __attribute__((naked)) static void NAME(const dw2_ctx *c)                          \
    {                                                                                  \
        (void)c;                                                                       \
        __asm volatile(DW2_PROLOGUE STEP DW2_REQUANT4(REQ) DW2_EPILOGUE);              \
    }
#define DW2_FUNCTIONS(NAME, STEP)                                                      \
    DW2_FUNCTION(NAME, STEP, TB_DSP_REQ_TFLITE)                                        \
    DW2_FUNCTION(NAME##_single, STEP, TB_DSP_REQ_SINGLE)
DW2_FUNCTIONS(dw2s1, DW2S1_STEP(TB_DW_ROWB_3))
DW2_FUNCTIONS(dw2s2, DW2S2_STEP(TB_DW_ROWB_3))
DW2_FUNCTIONS(dw2s1s, DW2S1_STEP(TB_DW_ROWB_3S))
DW2_FUNCTIONS(dw2s2s, DW2S2_STEP(TB_DW_ROWB_3S))

/* rows [from, from + n) of every channel's band to rows [0, n), the first `used` words of each
 * (words per channel: gwords) */
static void dw2_move_rows(int32_t *band, int32_t gwords, int32_t slot, int32_t from, int32_t n,
                          int32_t used)
{
    for (int32_t g = 0; g < TB_DW_GROUP; g++)
        for (int32_t r = 0; r < n; r++) {
            int32_t *d = band + g * gwords + r * slot;
            const int32_t *s = d + from * slot;
            int32_t i = 0;
            for (; i + 4 <= used; i += 4) {
                const int32_t a = s[i], b = s[i + 1], c = s[i + 2], e = s[i + 3];
                d[i] = a, d[i + 1] = b, d[i + 2] = c, d[i + 3] = e;
            }
            for (; i < used; i++) d[i] = s[i];
        }
}

/* Pairs along x, any width up to a slot: 0 if the rows do not fit (then the plain path). */
static int depthwise_band(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                          const int8_t *w, const int32_t *bias, const int32_t *mult,
                          const int32_t *shift, int8_t *y, int32_t c4)
{
    const int32_t k = p->kernel_h, s = p->stride_h, ch = in.c, h = (k - 1) / 2;
    const int32_t steps = (out.w + 1) / 2; /* two outputs a step; an odd row computes one more */
    const int32_t n_pairs = s == 1 ? steps + h : 2 * steps + h;
    const int two = k == 3 && !(out.w & 1); /* two output rows a pass */
    const int narrow = k == 3 && n_pairs <= TB_DW_PAIRS_3S;
    const int32_t slot = k == 3 ? (narrow ? TB_DW_PAIRS_3S : TB_DW_PAIRS_3)
                                : (k == 5 ? TB_DW_PAIRS_5 : TB_DW_PAIRS_7);
    const int32_t cap = TB_DW_BAND / (TB_DW_GROUP * slot); /* rows of the band */
    const int32_t gwords = cap * slot, nw = k == 3 ? 2 : (s == 1 ? 2 * h : h + 1);
    if (n_pairs > slot || cap < k + (two ? s : 0)) return 0;
    int32_t band[TB_DW_BAND];
    int32_t wt[TB_DW_GROUP][TB_DW_WT];  /* weight rows (3 x 3: then 2 bias) */
    int32_t rq[TB_DW_GROUP][4];         /* 2 bias, M, K, e */
    int8_t ylast[(2 * TB_DW_PAIRS_3 + 2) * TB_DW_GROUP]; /* an odd width's last row */
    const int single = p->rounding == TB_ROUND_SINGLE;
    void (*run1)(const dw_row_ctx *) =
        single ? (k == 3 ? (narrow ? (s == 1 ? dw3s1s_single : dw3s2s_single)
                                   : (s == 1 ? dw3s1_single : dw3s2_single))
                         : k == 5 ? (s == 1 ? dw5s1_single : dw5s2_single)
                                  : (s == 1 ? dw7s1_single : dw7s2_single))
               : (k == 3 ? (narrow ? (s == 1 ? dw3s1s : dw3s2s) : (s == 1 ? dw3s1 : dw3s2))
                         : k == 5 ? (s == 1 ? dw5s1 : dw5s2) : (s == 1 ? dw7s1 : dw7s2));
    void (*run2)(const dw2_ctx *) =
        single ? (narrow ? (s == 1 ? dw2s1s_single : dw2s2s_single) : (s == 1 ? dw2s1_single : dw2s2_single))
               : (narrow ? (s == 1 ? dw2s1s : dw2s2s) : (s == 1 ? dw2s1 : dw2s2));
    dw2_ctx c2;
    c2.steps = 4 * (s == 1 ? steps : 2 * steps);
    c2.wb = wt[0];
    c2.ystep = ch;
    c2.yrow = out.w * ch;
    c2.gstride = 4 * gwords;
    c2.prow = 4 * 2 * s * slot;
    dw_row_ctx c1;
    c1.steps = c2.steps;
    c1.wts = wt[0];
    c1.nch = TB_DW_GROUP;
    c1.gstride = c2.gstride;
    c1.wstride = 4 * TB_DW_WT;
    c1.prow = 4 * s * slot;
    c1.yrow = out.w * ch;
    for (int32_t c0 = 0; c0 < c4; c0 += TB_DW_GROUP) {
        if (k == 3) {
            /* per kernel row E0 = [w0, w1], O1 = [w1, w2] of each channel, doubled */
            for (int32_t ky = 0; ky < 3; ky++) {
                const int8_t *wr = w + 3 * ky * ch + c0;
                const uint32_t v0 = tb_read32(wr), v1 = tb_read32(wr + ch), v2 = tb_read32(wr + 2 * ch);
                uint32_t e0 = (uint32_t)__sxtb16(v0), e1 = (uint32_t)__sxtb16(v1);
                uint32_t e2 = (uint32_t)__sxtb16(v2), o0 = (uint32_t)tb_sxtb16_ror8(v0);
                uint32_t o1 = (uint32_t)tb_sxtb16_ror8(v1), o2 = (uint32_t)tb_sxtb16_ror8(v2);
                e0 = __sadd16(e0, e0), e1 = __sadd16(e1, e1), e2 = __sadd16(e2, e2);
                o0 = __sadd16(o0, o0), o1 = __sadd16(o1, o1), o2 = __sadd16(o2, o2);
                wt[0][2 * ky] = (int32_t)tb_pack_lo(e0, e1), wt[0][2 * ky + 1] = (int32_t)tb_pack_lo(e1, e2);
                wt[2][2 * ky] = (int32_t)tb_pack_hi(e0, e1), wt[2][2 * ky + 1] = (int32_t)tb_pack_hi(e1, e2);
                wt[1][2 * ky] = (int32_t)tb_pack_lo(o0, o1), wt[1][2 * ky + 1] = (int32_t)tb_pack_lo(o1, o2);
                wt[3][2 * ky] = (int32_t)tb_pack_hi(o0, o1), wt[3][2 * ky + 1] = (int32_t)tb_pack_hi(o1, o2);
            }
        } else {
            dw_weights4(w, k, s, ch, c0, nw, wt);
        }
        for (int32_t g = 0; g < TB_DW_GROUP; g++) {
            const int32_t b2 = bias ? 2 * bias[c0 + g] : 0;
            if (k == 3) wt[g][6] = b2; /* read by the two-row kernels */
            rq[g][0] = b2;
            rq[g][1] = mult[c0 + g];
            rq[g][2] = tb_dsp_rounding(-shift[c0 + g], p->output_offset);
            rq[g][3] = -shift[c0 + g];
        }
        int32_t first = -p->pad_top, have = 0; /* the band holds input rows first .. first + have */
        for (int32_t oy = 0; oy < out.h;) {
            const int32_t r0 = oy * s - p->pad_top; /* the first input row of this band's outputs */
            if (r0 > first) { /* rows before r0 are done: move the rest to the top */
                const int32_t keep = first + have - r0;
                if (keep > 0) dw2_move_rows(band, gwords, slot, r0 - first, keep, n_pairs);
                first = r0;
                have = keep > 0 ? keep : 0;
            }
            int32_t n = (cap - k) / s + 1; /* output rows whose input rows fit */
            if (n > out.h - oy) n = out.h - oy;
            else if (two && (n & 1) && n > 1) n--; /* whole tiles, but for the last band */
            for (int32_t r = have; r < (n - 1) * s + k; r++)
                dw_expand_row2(x, in, c0, first + r, p->pad_left, p->input_offset, n_pairs,
                               band + r * slot, gwords);
            have = (n - 1) * s + k;
            int32_t done = 0;
            if (two && n >= 2) {
                c2.p = band;
                c2.y = y + oy * out.w * ch + c0;
                c2.tiles = n / 2;
                c2.rq = rq[0];
                run2(&c2);
                done = n & ~1;
            }
            /* an odd width writes one output past each row: the next row overwrites it, but the
             * plane's last row goes through ylast */
            const int last = (out.w & 1) && oy + n == out.h;
            if (n - done - last > 0) {
                c1.p = band + done * s * slot;
                c1.y = y + (oy + done) * out.w * ch + c0;
                c1.ystep = ch;
                c1.rq = rq[0];
                c1.nrows = n - done - last;
                run1(&c1);
            }
            if (last) {
                c1.p = band + (n - 1) * s * slot;
                c1.y = ylast;
                c1.ystep = TB_DW_GROUP;
                c1.rq = rq[0];
                c1.nrows = 1;
                run1(&c1);
                int8_t *yl = y + (out.h - 1) * out.w * ch + c0;
                for (int32_t ox = 0; ox < out.w; ox++, yl += ch)
                    for (int32_t g = 0; g < TB_DW_GROUP; g++) yl[g] = ylast[ox * TB_DW_GROUP + g];
            }
            oy += n;
        }
    }
    return 1;
}
#undef PACK

/* ---- small planes: four channels at a time, taps inside the input only.
 * On planes of a few positions per row most windows overhang the padding (a 5x5 window on a 4x4
 * plane: half its taps), which the pair formulation above computes as zeros. Here each output
 * position of four channels runs over the taps whose input lies inside the plane only: the input
 * words of four channels split by SXTAB16 into [c0 c2] and [c1 c3] (+ offset) once per position
 * of the group, the (doubled) weights likewise once per tap, and per tap one LDRD of each, then
 * SMLABB / SMLATT for the four channels. A kernel row's taps are unrolled (at most 7, in reverse
 * so that a computed jump enters at the row's first valid tap with immediate offsets); the valid
 * tap rectangle of each output position comes from two small tables (per output row: first input
 * row and count; per output column: first input column, first tap, jump target). */
#define TB_DWS_MAXK 7
#ifndef TB_DWS_SMALL
#define TB_DWS_SMALL 8 /* output columns up to which this path runs */
#endif
#define TB_DWS_XWORDS 1024 /* the group's input rows of a band: 4 KB */
#define TB_DWS_MAXW 64     /* output columns and rows (per-column and per-row tables) */
#define TB_DWS_BANDS 16

typedef struct {
    const uint32_t *xt, *xtend;  /* per output column: x column bytes, w column bytes, jump */
    const uint32_t *yt, *ytend;  /* per output row: x row address, w row bytes, rows */
    const int32_t *rq;           /* per channel {M, K, e} x 4, then 4 x 2 bias */
    int8_t *y;                   /* first output position, channel 0 */
    int32_t ystep;               /* bytes between output positions */
    int32_t xs, ws;              /* bytes between input rows, between kernel rows */
    const int32_t *wx;           /* tap (ky, kx): wx + 2 (ky k + kx) */
} dws_ctx;

#define DWS_TAP(J)                                                                      \
    "ldrd r4, r5, [r12, #(8*" #J ")]\n\t"                                               \
    "ldrd r6, r7, [lr, #(8*" #J ")]\n\t"                                                \
    "smlabb r0, r4, r6, r0\n\t"                                                         \
    "smlatt r2, r4, r6, r2\n\t"                                                         \
    "smlabb r1, r5, r7, r1\n\t"                                                         \
    "smlatt r3, r5, r7, r3\n\t"
#define DWS_REQ(REQ, A, I)                                                              \
    "ldmia r8!, {r4, r5, r6}\n\t"                                                       \
    REQ(A, A, "r4", "r5", "r7")                                                         \
    "asr " A ", " A ", r6\n\t"                                                          \
    "ssat " A ", #8, " A "\n\t"                                                         \
    "strb " A ", [r9, #" #I "]\n\t"
/* frame: 0 xt cursor, 4 xt, 8 xtend, 12 yt cursor, 16 ytend, 20 rq, 24 y, 28 ystep, 32 xs, 36 ws,
 * 40 wx, 44 x row, 48 w row, 52 rows */
/* the unrolled taps' entry is a global symbol TAPS, for the C side's jump table */              \
#define DWS_RUN(NAME, REQ, TAPS)                                                                 \
__attribute__((naked)) static void NAME(const dws_ctx *c)                                        \
{                                                                                                \
    (void)c;                                                                                     \
    __asm volatile(                                                                              \
        "push {r4-r11, lr}\n\t"                                                                  \
        "sub sp, sp, #56\n\t"                                                                    \
        "ldmia r0, {r1, r2, r3, r4, r5, r6, r7, r8, r9, r10}\n\t" /* xt xtend yt ytend rq y ystep xs ws wx */ \
        "str r1, [sp, #4]\n\t"                                                                   \
        "str r2, [sp, #8]\n\t"                                                                   \
        "str r3, [sp, #12]\n\t"                                                                  \
        "add r0, sp, #16\n\t"                                                                    \
        "stmia r0, {r4, r5, r6, r7, r8, r9, r10}\n\t"                                            \
        "1:\n\t"                                  /* an output row */                            \
        "ldr r4, [sp, #12]\n\t"                                                                  \
        "ldmia r4!, {r5, r6, r7}\n\t"             /* x row, w row bytes, rows */                 \
        "str r4, [sp, #12]\n\t"                                                                  \
        "ldr r4, [sp, #40]\n\t"                                                                  \
        "add r6, r6, r4\n\t"                                                                     \
        "strd r5, r6, [sp, #44]\n\t"                                                             \
        "str r7, [sp, #52]\n\t"                                                                  \
        "ldr r4, [sp, #4]\n\t"                                                                   \
        "str r4, [sp, #0]\n\t"                                                                   \
        "2:\n\t"                                  /* an output position */                       \
        "ldr r4, [sp, #0]\n\t"                                                                   \
        "ldmia r4!, {r5, r6, r11}\n\t"            /* x column, w column, jump */                 \
        "str r4, [sp, #0]\n\t"                                                                   \
        "ldrd r12, lr, [sp, #44]\n\t"                                                            \
        "add r12, r12, r5\n\t"                                                                   \
        "add lr, lr, r6\n\t"                                                                     \
        "ldr r10, [sp, #52]\n\t"                                                                 \
        "ldrd r8, r9, [sp, #32]\n\t"                                                             \
        "ldr r4, [sp, #20]\n\t"                                                                  \
        "add r4, r4, #48\n\t"                                                                    \
        "ldmia r4, {r0, r1, r2, r3}\n\t"          /* 2 bias */                                   \
        "mov pc, r11\n\t"                                                                        \
        ".p2align 2\n\t"                                                                         \
        "5:\n\t"                                                                                 \
        DWS_TAP(6) DWS_TAP(5) DWS_TAP(4) DWS_TAP(3) DWS_TAP(2) DWS_TAP(1) DWS_TAP(0)             \
        "add r12, r12, r8\n\t"                                                                   \
        "add lr, lr, r9\n\t"                                                                     \
        "subs r10, r10, #1\n\t"                                                                  \
        "it ne\n\t"                                                                              \
        "movne pc, r11\n\t"                                                                      \
        "ldrd r8, r9, [sp, #20]\n\t"              /* rq, y */                                    \
        DWS_REQ(REQ, "r0", 0) DWS_REQ(REQ, "r1", 1) DWS_REQ(REQ, "r2", 2) DWS_REQ(REQ, "r3", 3)  \
        "ldr r4, [sp, #28]\n\t"                                                                  \
        "add r9, r9, r4\n\t"                                                                     \
        "str r9, [sp, #24]\n\t"                                                                  \
        "ldrd r4, r5, [sp, #0]\n\t"               /* xt cursor, (xt) */                          \
        "ldr r5, [sp, #8]\n\t"                                                                   \
        "cmp r4, r5\n\t"                                                                         \
        "bne 2b\n\t"                                                                             \
        "ldr r4, [sp, #12]\n\t"                                                                  \
        "ldr r5, [sp, #16]\n\t"                                                                  \
        "cmp r4, r5\n\t"                                                                         \
        "bne 1b\n\t"                                                                             \
        "add sp, sp, #56\n\t"                                                                    \
        "pop {r4-r11, pc}\n\t"                                                                   \
        ".global " TAPS "\n\t"                                                                   \
        ".set " TAPS ", 5b\n\t");                                                                \
}
DWS_RUN(dws_run, TB_DSP_REQ_TFLITE, "tb_dws_taps")
DWS_RUN(dws_run_single, TB_DSP_REQ_SINGLE, "tb_dws_taps_single")
#undef DWS_RUN
#undef DWS_TAP
#undef DWS_REQ

/* the unrolled taps of dws_run and dws_run_single (7 x 24 bytes each) */
extern const uint8_t tb_dws_taps[], tb_dws_taps_single[];

/* tb_dsp.h: tb_dsp_expand_quads (also the depthwise gradients' expansion) */
__attribute__((naked)) void tb_dsp_expand_quads(const int8_t *src, int32_t n, int32_t ch, int32_t off2,
                                                int32_t *dst)
{
    (void)src, (void)n, (void)ch, (void)off2, (void)dst;
    __asm volatile(
        "push {r4-r8, lr}\n\t"
        "ldr r12, [sp, #24]\n\t"           /* dst */
        "add lr, r12, r1, lsl #3\n\t"      /* dst end */
        "tst r1, #1\n\t"
        "beq 2f\n\t"
        "ldr r4, [r0]\n\t"
        "add r0, r0, r2\n\t"
        "sxtab16 r5, r3, r4\n\t"
        "sxtab16 r6, r3, r4, ror #8\n\t"
        "strd r5, r6, [r12], #8\n\t"
        "2:\n\t"
        "cmp r12, lr\n\t"
        "beq 3f\n\t"
        "1:\n\t"
        "ldr r4, [r0]\n\t"
        "ldr r7, [r0, r2]\n\t"
        "add r0, r0, r2, lsl #1\n\t"
        "sxtab16 r5, r3, r4\n\t"
        "sxtab16 r6, r3, r4, ror #8\n\t"
        "sxtab16 r8, r3, r7\n\t"
        "sxtab16 r7, r3, r7, ror #8\n\t"
        "strd r5, r6, [r12], #8\n\t"
        "strd r8, r7, [r12], #8\n\t"
        "cmp r12, lr\n\t"
        "bne 1b\n\t"
        "3:\n\t"
        "pop {r4-r8, pc}\n\t");
}

/* 0 if the shape is not for this path (kernel over 7, rows over TB_DWS_MAXW, a band of one
 * output row does not fit) */
static int depthwise_small(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                           const int8_t *w, const int32_t *bias, const int32_t *mult,
                           const int32_t *shift, int8_t *y, int32_t c4)
{
    const int32_t kh = p->kernel_h, kw = p->kernel_w, sh = p->stride_h, sw = p->stride_w;
    const int32_t ch = in.c, xrow = 2 * in.w; /* words of an input row of the group */
    if (kh > TB_DWS_MAXK || kw > TB_DWS_MAXK || out.w > TB_DWS_MAXW) return 0;
    /* input rows of one output row's window */
    if (kh * xrow > TB_DWS_XWORDS) return 0;
    uint32_t xt[3 * TB_DWS_MAXW];
    uint32_t yt[3 * TB_DWS_MAXW];
    int32_t xb[TB_DWS_XWORDS];
    int32_t wx[2 * TB_DWS_MAXK * TB_DWS_MAXK];
    int32_t rq[16];
    const int single = p->rounding == TB_ROUND_SINGLE;
    const uint8_t *taps = single ? tb_dws_taps_single : tb_dws_taps;
    for (int32_t ox = 0; ox < out.w; ox++) {
        const int32_t ix0 = ox * sw - p->pad_left;
        const int32_t k0 = ix0 < 0 ? -ix0 : 0;
        const int32_t k1 = in.w - ix0 < kw ? in.w - ix0 : kw;
        xt[3 * ox] = (uint32_t)(8 * (ix0 + k0));
        xt[3 * ox + 1] = (uint32_t)(8 * k0);
        xt[3 * ox + 2] = (uint32_t)(uintptr_t)taps + (uint32_t)(24 * (TB_DWS_MAXK - (k1 - k0)));
    }
    const int32_t off2 = (int32_t)(((uint32_t)p->input_offset & 0xFFFFu) |
                                   ((uint32_t)p->input_offset << 16));
    /* bands of output rows whose input rows fit xb (the same for every group): band i covers
     * output rows bo[i]..bo[i + 1], input rows br[i]..be[i]; yt rows for xb */
    int32_t bo[TB_DWS_BANDS + 1], br[TB_DWS_BANDS], be[TB_DWS_BANDS], nb = 0;
    if (out.h > TB_DWS_MAXW) return 0;
    for (int32_t oa = 0; oa < out.h; nb++) {
        if (nb == TB_DWS_BANDS) return 0;
        const int32_t ra = oa * sh - p->pad_top < 0 ? 0 : oa * sh - p->pad_top; /* first input row */
        int32_t ob = oa, rb = ra;
        while (ob < out.h) {
            int32_t e = ob * sh - p->pad_top + kh;
            if (e > in.h) e = in.h;
            if ((e > rb ? e : rb) - ra > TB_DWS_XWORDS / xrow) break;
            if (e > rb) rb = e;
            ob++;
        }
        const uintptr_t base = (uintptr_t)xb - (uintptr_t)(4 * ra * xrow); /* as if xb held row 0 */
        for (int32_t oy = oa; oy < ob; oy++) {
            const int32_t iy0 = oy * sh - p->pad_top;
            const int32_t k0 = iy0 < 0 ? -iy0 : 0;
            const int32_t k1 = in.h - iy0 < kh ? in.h - iy0 : kh;
            yt[3 * oy] = (uint32_t)(base + (uintptr_t)(4 * (iy0 + k0) * xrow));
            yt[3 * oy + 1] = (uint32_t)(8 * k0 * kw);
            yt[3 * oy + 2] = (uint32_t)(k1 - k0);
        }
        bo[nb] = oa, br[nb] = ra, be[nb] = rb;
        oa = ob;
    }
    bo[nb] = out.h;
    dws_ctx k;
    k.xt = xt;
    k.xtend = xt + 3 * out.w;
    k.rq = rq;
    k.ystep = ch;
    k.xs = 4 * xrow;
    k.ws = 8 * kw;
    k.wx = wx;
    for (int32_t c = 0; c < c4; c += 4) {
        const int8_t *wp = w + c;
        for (int32_t t = 0; t < kh * kw; t++, wp += ch) { /* doubled: the requantization takes 2 acc */
            const uint32_t v = tb_read32(wp);
            const uint32_t e = (uint32_t)__sxtb16(v), o = (uint32_t)tb_sxtb16_ror8(v);
            wx[2 * t] = (int32_t)__sadd16(e, e);
            wx[2 * t + 1] = (int32_t)__sadd16(o, o);
        }
        for (int32_t i = 0; i < 4; i++) {
            rq[3 * i] = mult[c + i];
            rq[3 * i + 1] = tb_dsp_rounding(-shift[c + i], p->output_offset);
            rq[3 * i + 2] = -shift[c + i];
            rq[12 + i] = bias ? 2 * bias[c + i] : 0;
        }
        for (int32_t b = 0; b < nb; b++) {
            for (int32_t iy = br[b]; iy < be[b]; iy++)
                tb_dsp_expand_quads(x + iy * in.w * ch + c, in.w, ch, off2, xb + (iy - br[b]) * xrow);
            k.yt = yt + 3 * bo[b];
            k.ytend = yt + 3 * bo[b + 1];
            k.y = y + bo[b] * out.w * ch + c;
            (single ? dws_run_single : dws_run)(&k);
        }
    }
    return 1;
}

/* Square odd kernels 3, 5, 7, equal strides 1 or 2 (any padding): channels in groups of 4, the
 * last in.c % 4 by the plain path. 0: not this shape. */
static int depthwise_dsp(const tb_conv_params *p, tb_shape in, const int8_t *x, tb_shape out,
                         const int8_t *w, const int32_t *bias, const int32_t *mult,
                         const int32_t *shift, int8_t *y)
{
    const int32_t k = p->kernel_h, c4 = in.c & ~(TB_DW_GROUP - 1);
    if (!(k == p->kernel_w && (k == 3 || k == 5 || k == 7) && p->stride_h == p->stride_w &&
          (p->stride_h == 1 || p->stride_h == 2) && c4 > 0 &&
          ((k > 3 && out.w <= TB_DWS_SMALL &&
            depthwise_small(p, in, x, out, w, bias, mult, shift, y, c4)) ||
           depthwise_band(p, in, x, out, w, bias, mult, shift, y, c4))))
        return 0;
    if (p->act_min != -128 || p->act_max != 127)
        for (int32_t i = 0; i < out.h * out.w * out.c; i++)
            y[i] = (int8_t)tb_clamp_i32(y[i], p->act_min, p->act_max);
    if (c4 < in.c) depthwise_plain(p, in, x, out, w, bias, mult, shift, y, c4, in.c);
    return 1;
}

/* Some channels outside the fast requantization's range: the DSP path with stand-ins for them,
 * then those channels by the plain path (tb_dsp.h). 0: not possible here. */
static int depthwise_dsp_stand_ins(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                   tb_shape out, const int8_t *w, const int32_t *bias,
                                   const int32_t *mult, const int32_t *shift, int8_t *y)
{
    const int32_t fan_in = p->kernel_h * p->kernel_w;
    tb_dsp_stand_ins s;
    if (!tb_dsp_fill_stand_ins(bias, shift, in.c, fan_in, &s) ||
        !depthwise_dsp(p, in, x, out, w, bias ? s.bias : NULL, mult, s.shift, y))
        return 0;
    for (int32_t c = 0; c < in.c; c++)
        if (!tb_dsp_channel_ok(bias, shift, c, fan_in) &&
            !tb_dsp_constant_channel(p, w + c, fan_in, in.c, bias ? bias[c] : 0, mult[c], shift[c],
                                     y + c, out.h * out.w, out.c))
            depthwise_plain(p, in, x, out, w, bias, mult, shift, y, c, c + 1);
    return 1;
}
#endif

tb_status tb_depthwise_conv2d_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                 tb_shape out, const int8_t *w, const int32_t *bias,
                                 const int32_t *mult, const int32_t *shift, int8_t *y)
{
    if (!tb_conv_geometry_ok(p, in, out) || in.c != out.c || !tb_rounding_ok(p->rounding)) return TB_ERR_ARG;
#if TB_DSP
    if (tb_dsp_requant_ok(bias, shift, in.c, p->kernel_h * p->kernel_w)
            ? depthwise_dsp(p, in, x, out, w, bias, mult, shift, y)
            : depthwise_dsp_stand_ins(p, in, x, out, w, bias, mult, shift, y))
        return TB_OK;
#endif
    depthwise_plain(p, in, x, out, w, bias, mult, shift, y, 0, in.c);
    return TB_OK;
}
