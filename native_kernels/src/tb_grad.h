/* Integer helpers shared by the gradient, loss and update kernels. Internal header. */
#ifndef TB_GRAD_H
#define TB_GRAD_H
#include <stdint.h>

/* |v| without overflow (|INT32_MIN| = 2^31 fits uint32). */
static inline uint32_t tb_abs_u32(int32_t v)
{
    return v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
}

/* Number of significant bits: 0 for 0, 7 for 127, 32 for 2^31. */
static inline int32_t tb_bitlen_u32(uint32_t v)
{
    int32_t n = 0;
    while (v) {
        n++;
        v >>= 1;
    }
    return n;
}

/* v * 2^-shift rounded half away from zero, saturated to [-127, 127]. shift <= 31; a negative
 * shift is a left shift whose result the caller knows to be below 2^32 in magnitude. */
static inline int8_t tb_grad_round_s8(int32_t v, int32_t shift)
{
    uint32_t mag = tb_abs_u32(v);
    if (shift > 0)
        mag = (mag + (1u << (shift - 1))) >> shift;  /* mag <= 2^31, so no carry out */
    else
        mag <<= -shift;
    if (mag > 127) mag = 127;
    return (int8_t)(v < 0 ? -(int32_t)mag : (int32_t)mag);
}

/* Exponent step that puts max_abs in [64, 128) (the bitlen rule); 0 for an all-zero tensor. */
static inline int32_t tb_grad_shift_for(uint32_t max_abs)
{
    return max_abs ? tb_bitlen_u32(max_abs) - 7 : 0;
}

/* sel holds n_sel strictly increasing channel indexes in [0, n), 1 <= n_sel <= n. */
static inline int tb_channels_ok(const int32_t *sel, int32_t n_sel, int32_t n)
{
    if (n_sel < 1 || n_sel > n || sel[0] < 0 || sel[n_sel - 1] >= n) return 0;
    for (int32_t j = 1; j < n_sel; j++)
        if (sel[j] <= sel[j - 1]) return 0;
    return 1;
}

#endif
