/* The int32-accumulating matrix core of the backward kernels' DSP paths. Internal header.
 *
 * Every MAC-carrying backward kernel but depthwise is a matrix product whose sums stay int32:
 *   pointwise / conv2d input gradient   acc[p][n] = sum_c W[c][n] h[p][c]       (W^T times h)
 *   pointwise / conv2d weight gradient  gw[c][t]  = sum_p g[p][c] X[p][t]       (over positions)
 * Both run on one core, the "trio": three rows x two columns (a "duo") of outputs, the reduction
 * in int16 pairs so that one SMLAD does two MACs. The rows' operands are expanded once into a
 * small buffer (xs, three interleaved rows) and reused by every duo of a column block; the
 * columns' operands are expanded once into a stream of duos (ws) and reused by every trio of
 * rows. Per pair step: one LDM (three rows), one LDRD (two columns), six SMLADs: 12 MACs in 8
 * instructions. The outputs are int32 in the caller's memory: the first reduction block writes
 * them, later blocks add to them (the reduction is blocked by TB_ACC_MAXQ pairs).
 *
 * Pairing: the two halves of a pair word are any two terms of the same sum; the row and column
 * words of one step must pair the same terms. Integer sums are exact, so the order is free
 * (docs/kernels.md, "int32 safety": every partial sum is bounded by the full one).
 *
 * Sizes are defined on every build (scratch sizes must not depend on the build); the code only
 * on the DSP build. See docs/kernels.md, "Optimized kernels". */
#ifndef TB_DSP_GRAD_H
#define TB_DSP_GRAD_H
#include <stdint.h>

#include "tb_dsp.h"

#define TB_ACC_MAXQ 24 /* pair steps per run: 48 terms of the reduction */
#define TB_ACC_NB 32   /* columns per stream block (16 duos) */

/* pair steps of a reduction of k terms taken four at a time (SXTB16 pairs terms 4j, 4j + 2 and
 * 4j + 1, 4j + 3), at most TB_ACC_MAXQ */
static inline int32_t tb_acc_nq(int32_t k)
{
    const int32_t nq = (k + 3) / 4 * 2;
    return nq < TB_ACC_MAXQ ? nq : TB_ACC_MAXQ;
}

/* words of a trio buffer and of a stream block for nq pair steps */
static inline int32_t tb_acc_trio_words(int32_t nq) { return 3 * nq; }
static inline int32_t tb_acc_stream_words(int32_t nq) { return TB_ACC_NB * nq; }

#if TB_DSP
typedef struct {
    int32_t *y0, *y1, *y2;  /* rows 0-2: the first duo's two int32 outputs (y += 2 per duo) */
    const int32_t *xs;      /* per pair step q: xs[3q + r] = row r's pair */
    int32_t entry;          /* tb_acc_entry(nq) */
    const int32_t *wend;    /* after the last duo */
    const int32_t *ws;      /* per duo, per step q: [column 0 pair][column 1 pair] */
    int32_t add;            /* 0: y_r[0..1] = sums (first reduction block); else y_r[0..1] += sums */
} tb_acc_ctx;

/* duo after duo until wend (assembly) */
void tb_dsp_acc_trio(const tb_acc_ctx *c);

/* where the unrolled pair steps start (every step is 32 bytes; the set form does its first step
 * before the jump, one step later) */
static inline int32_t tb_acc_entry(int32_t nq) { return (TB_ACC_MAXQ - nq) * 32; }

/* Runs a stream of nn columns (nn <= TB_ACC_NB, the last duo half empty when nn is odd) for three
 * rows: rows y0..y2 (NULL: a missing row, its outputs dropped), set or add. */
void tb_acc_run(const int32_t *xs, const int32_t *ws, int32_t nq, int32_t nn, int32_t *y0,
                int32_t *y1, int32_t *y2, int add);

/* Row r of a trio buffer from one row of int8 (k values, zero past them): pairs in SXTB16 order,
 * x + offset (offset 0 for gradients). k <= 2 nq. */
void tb_acc_expand_row(const int8_t *x, int32_t k, int32_t offset, int32_t nq, int32_t r,
                       int32_t *xs);

/* A stream block of the transposed matrix: columns n0..n0+nn of the int8 rows w[c][.] (row
 * length ld), reduction rows c0..c0+kn, in the pairing of tb_acc_expand_row:
 * ws[d][q] = [w[c0 + 4j + i][n], w[c0 + 4j + i + 2][n]] for q = 2j + i. */
void tb_acc_stream_transposed(const int8_t *w, int32_t ld, int32_t c0, int32_t kn, int32_t n0,
                              int32_t nn, int32_t nq, int32_t *ws);
#endif

#endif
