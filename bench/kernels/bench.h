/* Kernel benchmark firmware (QEMU mps2-an500, Cortex-M7): shared types.
 *
 * bench_kernels.c is the framework (job file in, results file out, timer, buffers, hashing);
 * bench_ops.inc is the kernel table, compiled twice: once against the kernels as built for the
 * target (bench_ops_main.c, DSP path where there is one) and once against a copy of every kernel
 * source built without __ARM_FEATURE_DSP and with its symbols renamed tb_* -> ref_tb_*
 * (bench_ops_ref.c; run.py generates the copies). Both tables list the same entries in the same
 * order; the framework runs both on identical data and refuses figures whose outputs differ. */
#ifndef BENCH_H
#define BENCH_H
#include <stdint.h>

#include "tb_kernels.h"

/* layer kinds (bit masks), as run.py writes them */
enum {
    BK_CONV = 1,   /* k x k convolution (the first layer) */
    BK_DW = 2,     /* depthwise */
    BK_PW = 4,     /* pointwise */
    BK_FC = 8,     /* classifier */
    BK_POOL = 16,  /* global average pool before the classifier */
    BK_ADD = 32    /* residual add */
};
#define BK_CONVS (BK_CONV | BK_DW | BK_PW)

/* one layer shape; field order = run.py's LAYER_FIELDS */
typedef struct {
    char label[24];
    int32_t kind;
    int32_t in_h, in_w, in_c, out_h, out_w, out_c;
    int32_t kernel, stride, pad;
    int32_t in_off, out_off, act_min, act_max;
    int32_t shift;     /* requantization shift the output scale calls for (mult in [2^30, 2^31)) */
    int32_t extra[6];  /* ADD: input1 mult, shift, input2 mult, shift, output mult, shift */
} bench_layer;

enum { FILL_NONE, FILL_ZERO, FILL_S8, FILL_S8W, FILL_S32, FILL_MULT, FILL_SHIFT, FILL_SEL,
       FILL_F32 };
enum { ROLE_IN, ROLE_OUT, ROLE_SCRATCH };

#define BENCH_MAX_BUFS 10

typedef struct {
    uint32_t bytes;
    uint8_t fill, role;
    int32_t lo, hi;    /* value range of FILL_S32 / FILL_F32 (x 1/1024), FILL_SHIFT base */
    void *p;
} bench_buf;

typedef struct {
    bench_layer L;     /* the shape measured (rows may be fewer than the layer's: see reduced) */
    int64_t ops;       /* work of one call: MACs, or elements for elementwise kernels */
    int nbuf;
    bench_buf buf[BENCH_MAX_BUFS];
    int32_t ret;       /* return value of the call, compared too */
    float fret;
    /* arguments the plan prepares so that the measured call only passes them */
    tb_conv_params cp;
    tb_add_params ap;
    tb_shape in, out;
    int32_t n, n_pos, n_sel;
    int32_t chunk;     /* output channels of one call when fewer than the layer's (0: all) */
} bench_ctx;

typedef struct {
    const char *name;
    uint32_t kinds;    /* BK_* the kernel runs on */
    const char *unit;  /* "MAC" or "elem" */
    /* declares the buffers (bench_add_buf) and ops for ctx->L; returns 0 if not applicable or
     * the kernel is absent from this build */
    int (*plan)(bench_ctx *c);
    void (*run)(bench_ctx *c);
} bench_kernel;

/* framework helpers for plan functions */
int bench_add_buf(bench_ctx *c, uint32_t bytes, int fill, int role, int32_t lo, int32_t hi);

#endif
