/* Global average pool backward: every input position receives its channel's gradient / count. */
#include "tb_train.h"
#include "tb_grad.h"

int32_t tb_avgpool_global_input_grad_s8(tb_shape in, const int8_t *g, int32_t g_exp, int8_t *gx)
{
    if (in.h <= 0 || in.w <= 0) return g_exp;  /* no position to write */
    const int32_t count = in.h * in.w;
    uint32_t g_max = 0;
    for (int32_t c = 0; c < in.c; c++) {
        const uint32_t a = tb_abs_u32(g[c]);
        if (a > g_max) g_max = a;
    }
    /* largest k with g_max * 2^k < 128 * count: max |g| * 2^k / count lands in [64, 128), the
     * same range the bitlen rule gives; k <= 7 + 23, and g_max * 2^k < 2^30 */
    int32_t k = 0;
    if (g_max)
        while ((g_max << (k + 1)) < 128u * (uint32_t)count) k++;
    for (int32_t c = 0; c < in.c; c++) {
        /* |g| * 2^k / count, rounded half away from zero (exactly, from the remainder) */
        const uint32_t num = tb_abs_u32(g[c]) << k;
        uint32_t q = num / (uint32_t)count;
        if (2u * (num - q * (uint32_t)count) >= (uint32_t)count) q++;
        if (q > 127) q = 127;
        const int8_t v = (int8_t)(g[c] < 0 ? -(int32_t)q : (int32_t)q);
        for (int32_t p = 0; p < count; p++) gx[p * in.c + c] = v;
    }
    return g_exp - k;
}
