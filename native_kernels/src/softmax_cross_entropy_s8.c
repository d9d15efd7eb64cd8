/* Softmax cross-entropy of int8 logits. Its own exp and log, made of float +, -, *, / and bit
 * manipulation only (no libm, no double), so the loss and the gradient are bit-identical on
 * x86-64 and on the Cortex-M7 FPU (both IEEE single precision, no contraction, no subnormals). */
#include <float.h>
#include "tb_train.h"
#include "tb_grad.h"

typedef union {
    float f;
    uint32_t u;
} tb_float_bits;

/* ln 2 split so that n * LN2_HI is exact for |n| < 512 (Cody-Waite). */
#define TB_LN2_HI 0.693145751953125f
#define TB_LN2_LO 1.42860677e-6f

/* e^x for x <= 0; 0 below -87, where e^x would leave the normal range. x = n ln2 + r with
 * |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial (truncation < 2^-27), 2^n from the bits. */
static float tb_expf_nonpos(float x)
{
    if (x < -87.0f) return 0.0f;
    const int32_t n = (int32_t)(x * 1.44269504f - 0.5f);  /* truncation: nearest for x <= 0 */
    const float r = (x - (float)n * TB_LN2_HI) - (float)n * TB_LN2_LO;
    float e = 1.98412698e-4f;                             /* 1/7! */
    e = e * r + 1.38888889e-3f;
    e = e * r + 8.33333333e-3f;
    e = e * r + 4.16666667e-2f;
    e = e * r + 1.66666667e-1f;
    e = e * r + 0.5f;
    e = e * r + 1.0f;
    e = e * r + 1.0f;
    tb_float_bits two_n;
    two_n.u = (uint32_t)(n + 127) << 23;                  /* n >= -126: a normal power of two */
    return e * two_n.f;
}

/* ln x for a positive normal x. x = m 2^k with m in [sqrt(1/2), sqrt(2)); with s = (m-1)/(m+1),
 * ln m = 2 (s + s^3/3 + ... + s^11/11), |s| <= 0.172 (truncation < 2^-34). */
static float tb_logf_pos(float x)
{
    tb_float_bits b;
    b.f = x;
    int32_t k = (int32_t)(b.u >> 23) - 127;
    b.u = (b.u & 0x007fffffu) | 0x3f800000u;             /* m in [1, 2) */
    float m = b.f;
    if (m > 1.41421356f) {
        m *= 0.5f;
        k++;
    }
    const float s = (m - 1.0f) / (m + 1.0f);
    const float z = s * s;
    float t = 9.09090909e-2f;                             /* 1/11 */
    t = t * z + 1.11111111e-1f;
    t = t * z + 1.42857143e-1f;
    t = t * z + 2.0e-1f;
    t = t * z + 3.33333333e-1f;
    t = t * z + 1.0f;
    return (float)k * TB_LN2_HI + ((float)k * TB_LN2_LO + 2.0f * s * t);
}

/* (softmax - onehot)[i] in Q30: round(e * 2^30 / sum), minus 2^30 for the label; 0 where the
 * mask clamps. e <= sum, so the quotient is at most 2^30; below 2^-31 a probability rounds to 0. */
static int32_t tb_softmax_grad_q30(float e, float sum, int32_t i, int32_t label, const uint8_t *mask)
{
    if (mask && !((mask[i >> 3] >> (i & 7)) & 1u)) return 0;
    const float p = e * 1073741824.0f / sum;
    int32_t q = (int32_t)p;                               /* floor: p >= 0 */
    if (p - (float)q >= 0.5f) q++;                         /* exact: q and p share p's grid */
    return i == label ? q - (1 << 30) : q;
}

float tb_softmax_cross_entropy_s8(const int8_t *logits, int32_t n, float scale,
                                  int32_t zero_point, int32_t label, const uint8_t *mask,
                                  int8_t *grad, int32_t *grad_exp)
{
    (void)zero_point;  /* z_i - z_max = scale * (q_i - q_max) */
    if (n < 1 || label < 0 || label >= n || !(scale > 0.0f && scale <= FLT_MAX)) return -1.0f;
    int32_t q_max = logits[0];
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > q_max) q_max = logits[i];
    /* e_i = exp(z_i - z_max) in (0, 1], recomputed identically by every pass; sum >= 1 */
    float sum = 0.0f;
    for (int32_t i = 0; i < n; i++) sum += tb_expf_nonpos(scale * (float)(logits[i] - q_max));
    uint32_t max_abs = 0;
    for (int32_t i = 0; i < n; i++) {
        const float e = tb_expf_nonpos(scale * (float)(logits[i] - q_max));
        const uint32_t a = tb_abs_u32(tb_softmax_grad_q30(e, sum, i, label, mask));
        if (a > max_abs) max_abs = a;
    }
    const int32_t shift = tb_grad_shift_for(max_abs);
    for (int32_t i = 0; i < n; i++) {
        const float e = tb_expf_nonpos(scale * (float)(logits[i] - q_max));
        grad[i] = tb_grad_round_s8(tb_softmax_grad_q30(e, sum, i, label, mask), shift);
    }
    *grad_exp = shift - 30;
    /* loss = log(sum_i e^(z_i - z_max)) - (z_label - z_max) */
    return tb_logf_pos(sum) - scale * (float)(logits[label] - q_max);
}
