/* Fixed-point requantization, exactly as TFLite's reference kernels compute it (gemmlowp's
 * SaturatingRoundingDoublingHighMul followed by RoundingDivideByPOT). Internal header. */
#ifndef TB_REQUANT_H
#define TB_REQUANT_H
#include <stdint.h>
#include "tb_kernels.h"

static inline int32_t tb_sat_rounding_doubling_high_mul(int32_t a, int32_t b)
{
    if (a == b && a == INT32_MIN) return INT32_MAX;
    int64_t ab = (int64_t)a * (int64_t)b;
    int32_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    /* division truncates toward zero, as gemmlowp specifies */
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

static inline int32_t tb_rounding_divide_by_pot(int32_t x, int exponent)
{
    int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* x * multiplier * 2^(shift - 31), TFLite MultiplyByQuantizedMultiplier */
static inline int32_t tb_requantize(int32_t x, int32_t multiplier, int32_t shift)
{
    int left = shift > 0 ? shift : 0;
    int right = shift > 0 ? 0 : -shift;
    return tb_rounding_divide_by_pot(
        tb_sat_rounding_doubling_high_mul((int32_t)((uint32_t)x << left), multiplier), right);
}

/* round(x * multiplier * 2^(shift - 31)) from the exact product, rounded once, ties up
 * (TB_ROUND_SINGLE), saturated to int32 */
static inline int32_t tb_requantize_single(int32_t x, int32_t multiplier, int32_t shift)
{
    const int total = 31 - shift;
    const int64_t v = ((int64_t)x * multiplier + ((int64_t)1 << (total - 1))) >> total;
    return v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : (int32_t)v);
}

/* the requantization a tb_rounding names (checked by tb_rounding_ok) */
static inline int32_t tb_requantize_as(int32_t rounding, int32_t x, int32_t multiplier, int32_t shift)
{
    return rounding == TB_ROUND_SINGLE ? tb_requantize_single(x, multiplier, shift)
                                       : tb_requantize(x, multiplier, shift);
}

static inline int tb_rounding_ok(int32_t rounding)
{
    return rounding == TB_ROUND_TFLITE || rounding == TB_ROUND_SINGLE;
}

static inline int32_t tb_clamp_i32(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

#endif
