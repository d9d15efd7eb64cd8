/* Argument checks shared by the kernels. Internal header. */
#ifndef TB_CHECKS_H
#define TB_CHECKS_H
#include "tb_kernels.h"

/* The output shape is the one this geometry produces, every dimension positive, and every
 * window overlaps the input (so no output is computed from padding alone). */
static inline int tb_conv_geometry_ok(const tb_conv_params *p, tb_shape in, tb_shape out)
{
    if (in.h <= 0 || in.w <= 0 || in.c <= 0 || out.h <= 0 || out.w <= 0 || out.c <= 0) return 0;
    if (p->kernel_h <= 0 || p->kernel_w <= 0 || p->stride_h <= 0 || p->stride_w <= 0) return 0;
    if (p->pad_top < 0 || p->pad_left < 0 || p->pad_top >= p->kernel_h || p->pad_left >= p->kernel_w)
        return 0;
    if (p->act_min > p->act_max || p->act_min < -128 || p->act_max > 127) return 0;
    /* last window starts inside the input */
    if ((out.h - 1) * p->stride_h - p->pad_top >= in.h) return 0;
    if ((out.w - 1) * p->stride_w - p->pad_left >= in.w) return 0;
    /* and the input is covered no further than padding allows: out = ceil or floor division */
    if ((out.h - 1) * p->stride_h + p->kernel_h - p->pad_top > in.h + p->kernel_h - 1) return 0;
    if ((out.w - 1) * p->stride_w + p->kernel_w - p->pad_left > in.w + p->kernel_w - 1) return 0;
    return 1;
}

#endif
