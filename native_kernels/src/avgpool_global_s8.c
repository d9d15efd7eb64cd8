/* Global average pool, int8: the mean rounded half away from zero (TFLite AVERAGE_POOL_2D) or
 * half to even (TB_ROUND_SINGLE: numpy's and PyTorch's round). */
#include "tb_kernels.h"
#include "tb_requant.h"

tb_status tb_avgpool_global_s8(tb_shape in, const int8_t *x, int32_t act_min, int32_t act_max,
                               int32_t rounding, int8_t *y)
{
    if (in.h <= 0 || in.w <= 0 || in.c <= 0 || in.h * in.w > (1 << 23) || act_min > act_max ||
        act_min < -128 || act_max > 127 || !tb_rounding_ok(rounding))
        return TB_ERR_ARG;
    const int32_t count = in.h * in.w;
    for (int32_t c = 0; c < in.c; c++) {
        int32_t acc = 0;
        for (int32_t p = 0; p < count; p++) acc += x[p * in.c + c];
        if (rounding == TB_ROUND_SINGLE) {
            /* floor division, then up when past half or at half with an odd quotient */
            int32_t q = acc / count, r = acc % count;
            if (r < 0) q -= 1, r += count;
            acc = q + (2 * r > count || (2 * r == count && (q & 1)));
        } else {
            acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
        }
        y[c] = (int8_t)tb_clamp_i32(acc, act_min, act_max);
    }
    return TB_OK;
}
