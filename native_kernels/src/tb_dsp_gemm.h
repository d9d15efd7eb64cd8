/* The int8 matrix core shared by the DSP paths of pointwise and k x k convolution. Internal header.
 *
 * y[p][c] = requant(bias[c] + sum_i w[c][i] * (x[p][i] + offset)), by rows of k inputs:
 *  - trio (k <= TB_GEMM_TRIO_MAX_K = 48): three positions at a time, both operands expanded to
 *    int16 in scratch: the inputs of the three positions once (reused by every channel of the
 *    block), the weights of a block of channels once per call (reused by every position). The
 *    inner loop is pure loads and SMLADs: per 2 inputs, one LDM (three positions), one LDRD (two
 *    channels) and six SMLADs, for 12 MACs.
 *  - solo (k = 8): one position, its inputs in four registers, one LDM per channel.
 *  - hexa / quad (longer rows, k a multiple of 8): six or four positions x one channel, inputs
 *    expanded, weights read as int8 and unpacked by SXTB16 (shared by the positions).
 * See docs/kernels.md, "Optimized kernels".
 *
 * Sizes are defined on every build (scratch sizes must not depend on the build); the code only
 * on the DSP build. */
#ifndef TB_DSP_GEMM_H
#define TB_DSP_GEMM_H
#include <stdint.h>

#include "tb_dsp.h"

#define TB_GEMM_BLOCK 48 /* output channels whose weights are expanded at once (24 duos) */

/* k inputs per output, padded to a multiple of 4 (SXTB16 unpacks 4 at a time) */
static inline int32_t tb_gemm_k4(int32_t k)
{
    return (k + 3) & ~3;
}

/* words of one channel pair in the weight stream: 2 biases, (k4 / 2) x 2 weight pairs,
 * 2 x {multiplier, rounding, exponent} */
static inline int32_t tb_gemm_duo_words(int32_t k4)
{
    return 2 + k4 + 6;
}

/* words of the weight stream of one block of a call with oc output channels: a block holds
 * at most TB_GEMM_BLOCK of them, so an op with fewer needs no room for the rest */
static inline int32_t tb_gemm_stream_words(int32_t k4, int32_t oc)
{
    const int32_t block = oc < TB_GEMM_BLOCK ? oc : TB_GEMM_BLOCK;
    return (block + 1) / 2 * tb_gemm_duo_words(k4);
}

/* scratch of the trio scheme: three positions' inputs (3 k4 / 2 words), the block's weight
 * stream, 16 bytes for alignment */
static inline int32_t tb_gemm_scratch_bytes(int32_t k, int32_t oc)
{
    const int32_t k4 = tb_gemm_k4(k);
    return 4 * (3 * k4 / 2) + 4 * tb_gemm_stream_words(k4, oc) + 16;
}

/* The quad scheme, for long rows (k > TB_GEMM_TRIO_MAX_K, k a multiple of 8): 4 positions x 1
 * channel, inputs expanded (k / 4 groups x 4 positions x 2 words), weights read as int8 from
 * the caller's rows, constants of TB_GEMM_QUAD_BLOCK channels at a time. */
#define TB_GEMM_TRIO_MAX_K 48
#define TB_GEMM_QUAD_BLOCK 128

static inline int tb_gemm_use_quad(int32_t k)
{
    return k > TB_GEMM_TRIO_MAX_K && k % 8 == 0;
}

/* words of the constants of one block of a call with oc output channels (4 a channel, one more
 * channel's room at the end) */
static inline int32_t tb_gemm_quad_constant_words(int32_t oc)
{
    return 4 * ((oc < TB_GEMM_QUAD_BLOCK ? oc : TB_GEMM_QUAD_BLOCK) + 1);
}

/* quad and hexa (6 positions) share the scratch: inputs of 6 positions, constants, alignment */
static inline int32_t tb_gemm_quad_scratch_bytes(int32_t k, int32_t oc)
{
    return 12 * k + 4 * tb_gemm_quad_constant_words(oc) + 16;
}

#if TB_DSP
typedef struct {
    const int32_t *xs;   /* the inputs: for each input pair q, [p0 pair q][p1 pair q][p2 pair q] */
    int32_t entry;       /* (24 - k4 / 2) * 32: where the unrolled pair steps start */
    const int32_t *ws;   /* first duo of the weight stream; the run ends at a flagged duo */
    const int32_t *unused;
    int8_t *y;           /* output of position p0, channel of the first duo */
    int32_t oc, oc2;     /* bytes from p0's outputs to p1's and to p2's */
} tb_gemm_ctx;

/* Runs duos from ws for three positions up to the first duo whose last exponent word has bit 31
 * (tb_dsp_gemm_weights sets it), k4 <= 48 (assembly: tb_dsp_gemm.c). Outputs are saturated to
 * int8, not clamped to a narrower activation range (tb_dsp_clamp_s8 does that afterwards).
 * Every assembly routine has a _single twin that rounds once (TB_ROUND_SINGLE). */
void tb_dsp_gemm_trio_run(const tb_gemm_ctx *ctx);
void tb_dsp_gemm_trio_run_single(const tb_gemm_ctx *ctx);

static inline int32_t tb_gemm_trio_entry(int32_t k)
{
    return (24 - tb_gemm_k4(k) / 2) * 32;
}

/* The weight stream of channels [c0, c1) (at most TB_GEMM_BLOCK): w rows of k int8 at w + c * k.
 * Weights and biases are doubled (the requantization takes 2 * acc). A channel padding the last
 * duo gets zero weights and constants. */
void tb_dsp_gemm_weights(const int8_t *w, int32_t k, int32_t c0, int32_t c1, const int32_t *bias,
                         const int32_t *mult, const int32_t *shift, int32_t output_offset,
                         int32_t *ws);

/* One position's k inputs (x + offset) into slot p (0..2) of the trio buffer. */
void tb_dsp_gemm_expand(const int8_t *x, int32_t k, int32_t offset, int32_t p, int32_t *xs);

/* Three consecutive positions (rows of k int8, k a multiple of 8) into the trio buffer, x + the
 * offset in both halfwords of off2 (assembly). */
void tb_dsp_trio_expand(const int8_t *x, int32_t k, int32_t off2, int32_t *xs);

/* Zeros slot p of the trio buffer (a missing position). */
void tb_dsp_gemm_zero(int32_t k, int32_t p, int32_t *xs);

/* Runs channels [0, n) of a weight stream (n <= TB_GEMM_BLOCK) for the three positions in xs:
 * the full duos in place, an odd last channel through a small buffer. y1, y2: NULL for a
 * missing position. */
void tb_dsp_gemm_run(const int32_t *xs, int32_t k, const int32_t *ws, int32_t n, int8_t *y0,
                     int8_t *y1, int8_t *y2, void (*trio)(const tb_gemm_ctx *));

typedef struct {
    const int32_t *xs;   /* for each group of 4 inputs: [p0 even, p0 odd, p1 even, ... p3 odd] */
    const int32_t *xend; /* xs + 2 * k */
    const int8_t *w;     /* weight row of the first channel; rows follow each other */
    const int8_t *wend;  /* end of the last row to run */
    const int32_t *rq;   /* per channel {2 * bias, multiplier, rounding, exponent}, + 1 spare */
    int8_t *y;           /* output of the first channel at position 0 */
    int32_t oc;          /* bytes between positions' outputs */
    int32_t unused;
} tb_gemm_quad_ctx;

/* k / 4 must be even and at least 2 (assembly: tb_dsp_gemm.c) */
void tb_dsp_gemm_quad(const tb_gemm_quad_ctx *ctx);
void tb_dsp_gemm_quad_single(const tb_gemm_quad_ctx *ctx);
/* six positions x one channel, same context (xend = xs + 3 k; y the first position's, positions
 * oc apart) (assembly) */
void tb_dsp_gemm_hexa(const tb_gemm_quad_ctx *ctx);
void tb_dsp_gemm_hexa_single(const tb_gemm_quad_ctx *ctx);
void tb_dsp_gemm_hexa4(const tb_gemm_quad_ctx *ctx); /* k a multiple of 16 */
void tb_dsp_gemm_hexa4_single(const tb_gemm_quad_ctx *ctx);
void tb_dsp_hexa_expand6(const int8_t *x, int32_t k, int32_t off2, int32_t *xs);
/* four consecutive positions (rows of k int8, k a multiple of 8), doubled (assembly) */
void tb_dsp_quad_expand4(const int8_t *x, int32_t k, int32_t off2, int32_t *xs);
void tb_dsp_quad_constants(int32_t c0, int32_t c1, const int32_t *bias, const int32_t *mult,
                           const int32_t *shift, int32_t output_offset, int32_t *rq);
void tb_dsp_quad_expand(const int8_t *x, int32_t k, int32_t offset, int32_t p, int32_t *xs);
void tb_dsp_quad_zero(int32_t k, int32_t p, int32_t *xs);

typedef struct {
    const int8_t *x;     /* first position's 8 inputs; positions follow */
    const int8_t *xend;
    const int32_t *ws;   /* per channel {4 weight words, 2 bias, M, K, e}; the last e has bit 31 */
    int8_t *y;           /* first output */
    int32_t off2;        /* input offset in both halfwords */
    int32_t yskip;       /* bytes from the last channel's output to the next position's first */
} tb_gemm_solo_ctx;

/* k = 8: one position at a time, the input in registers; an even number of channels (assembly) */
void tb_dsp_gemm_solo8(const tb_gemm_solo_ctx *ctx);
void tb_dsp_gemm_solo8_single(const tb_gemm_solo_ctx *ctx);
void tb_dsp_solo8_stream(const int8_t *w, int32_t c0, int32_t c1, const int32_t *bias,
                         const int32_t *mult, const int32_t *shift, int32_t output_offset,
                         int32_t *ws);

/* The assembly routines of one tb_rounding. */
typedef struct {
    void (*trio)(const tb_gemm_ctx *);
    void (*quad)(const tb_gemm_quad_ctx *);
    void (*hexa)(const tb_gemm_quad_ctx *);
    void (*hexa4)(const tb_gemm_quad_ctx *);
    void (*solo8)(const tb_gemm_solo_ctx *);
} tb_gemm_routines;

const tb_gemm_routines *tb_gemm_routines_for(int32_t rounding);

/* y[i] = clamp(y[i], lo, hi) over n bytes (after the saturating core). */
void tb_dsp_clamp_s8(int8_t *y, int32_t n, int32_t lo, int32_t hi);
#endif

#endif
