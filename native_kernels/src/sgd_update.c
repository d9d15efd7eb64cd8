/* QAS-scaled SGD (paper Eq. 2) with stochastic rounding. Dividing the dequantized-parameter
 * gradient by the parameter's scale moves param * scale exactly as float SGD would; stochastic
 * rounding keeps that move unbiased when it is a fraction of one int step, where rounding to
 * nearest would drop it. float32 only, no contraction: identical on every target. */
#include <float.h>
#include <math.h>
#include "tb_train.h"
#include "tb_grad.h"

/* Marsaglia's xorshift32; a nonzero state never becomes zero. */
static uint32_t tb_xorshift32(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

/* floor(s) + 1 with probability s - floor(s), else floor(s), as a float holding an integer. |s| is
 * clamped to limit first (a larger step saturates the parameter anyway); NaN gives 0. In float:
 * floorf is one instruction on the M7 (VRINTM), a float-to-int64 conversion a library call. A
 * fraction implies |s| < 2^23, so floor(s) + 1 is exact. */
static inline float tb_stochastic_round(float s, float limit, uint32_t *rng)
{
    const float u = (float)(tb_xorshift32(rng) >> 8) * 0x1p-24f;  /* uniform in [0, 1), exact */
    if (s != s) return 0.0f;
    s = fminf(fmaxf(s, -limit), limit);                            /* VMAXNM, VMINNM */
    const float floor_s = floorf(s);
    return u < s - floor_s ? floor_s + 1.0f : floor_s;             /* s - floor(s) is exact */
}

/* The step direction: grad_scale * grad, through the velocity when there is one. */
static float tb_sgd_direction(int32_t grad, float grad_scale, float momentum, float *v)
{
    const float d = grad_scale * (float)grad;
    if (!v) return d;
    *v = momentum * *v + d;
    return *v;
}

static int tb_finite(float x)
{
    return x >= -FLT_MAX && x <= FLT_MAX;
}

static int tb_sgd_scalars_ok(float grad_scale, float lr, float momentum)
{
    return tb_finite(grad_scale) && tb_finite(lr) && lr >= 0.0f && tb_finite(momentum) &&
           momentum >= 0.0f;
}

static int tb_param_scale_ok(float s)
{
    return s > 0.0f && s <= FLT_MAX;   /* finite and positive (NaN fails both) */
}

static int8_t tb_sat_s8(int32_t v)
{
    return (int8_t)(v < -127 ? -127 : (v > 127 ? 127 : v));
}

tb_status tb_sgd_update_ohwi_s8(int8_t *w, int32_t out_c, int32_t taps, int32_t in_c,
                                const int32_t *sel, int32_t n_sel, int32_t c_begin, int32_t c_end,
                                const int32_t *grad_w, float grad_scale, const float *param_scale,
                                float lr, float momentum, float *velocity, uint32_t *rng)
{
    if (taps <= 0 || in_c <= 0 || c_begin < 0 || c_begin >= c_end || c_end > out_c ||
        !tb_channels_ok(sel, n_sel, in_c) || !tb_sgd_scalars_ok(grad_scale, lr, momentum))
        return TB_ERR_ARG;
    for (int32_t c = c_begin; c < c_end; c++)
        if (!tb_param_scale_ok(param_scale[c])) return TB_ERR_ARG;
    uint32_t state = *rng;  /* in a register: the stores to w could alias *rng for the compiler */
    int32_t i = 0;          /* index into grad_w and velocity: [c - c_begin][t][j] */
    for (int32_t c = c_begin; c < c_end; c++) {
        const float k = lr / param_scale[c];
        for (int32_t t = 0; t < taps; t++) {
            int8_t *wt = w + (c * taps + t) * in_c;
            for (int32_t j = 0; j < n_sel; j++, i++) {
                const float step =
                    tb_sgd_direction(grad_w[i], grad_scale, momentum, velocity ? velocity + i : 0) * k;
                /* |step| >= 256 saturates any int8 weight, so 256 loses nothing */
                wt[sel[j]] = tb_sat_s8(wt[sel[j]] - (int32_t)tb_stochastic_round(step, 256.0f, &state));
            }
        }
    }
    *rng = state;
    return TB_OK;
}

tb_status tb_sgd_update_depthwise_s8(int8_t *w, int32_t taps, int32_t ch, const int32_t *sel,
                                     int32_t n_sel, const int32_t *grad_w, float grad_scale,
                                     const float *param_scale, float lr, float momentum,
                                     float *velocity, uint32_t *rng)
{
    if (taps <= 0 || ch <= 0 || !tb_channels_ok(sel, n_sel, ch) ||
        !tb_sgd_scalars_ok(grad_scale, lr, momentum))
        return TB_ERR_ARG;
    for (int32_t j = 0; j < n_sel; j++)
        if (!tb_param_scale_ok(param_scale[sel[j]])) return TB_ERR_ARG;
    uint32_t state = *rng;
    int32_t i = 0;  /* index into grad_w and velocity: [t][j] */
    for (int32_t t = 0; t < taps; t++) {
        for (int32_t j = 0; j < n_sel; j++, i++) {
            const int32_t c = sel[j];
            const float step = tb_sgd_direction(grad_w[i], grad_scale, momentum,
                                                velocity ? velocity + i : 0) *
                               (lr / param_scale[c]);
            w[t * ch + c] = tb_sat_s8(w[t * ch + c] - (int32_t)tb_stochastic_round(step, 256.0f, &state));
        }
    }
    *rng = state;
    return TB_OK;
}

/* (int64_t)r for an integral r with |r| <= 2^33, without the library's float-to-int64 routine
 * (about 100 instructions on the M7): below 2^31 one VCVT is exact; above, a 24-bit significand
 * makes r a multiple of 2^8, and r / 2^8 converts exactly. */
static int64_t tb_integral_to_i64(float r)
{
    if (r > -2147483648.0f && r < 2147483648.0f) return (int32_t)r;
    return (int64_t)(int32_t)(r * 0x1p-8f) * 256;
}

tb_status tb_sgd_update_bias_s32(int32_t *b, int32_t n, const int32_t *grad_b, float grad_scale,
                                 const float *param_scale, float lr, float momentum,
                                 float *velocity, uint32_t *rng)
{
    if (n <= 0 || !tb_sgd_scalars_ok(grad_scale, lr, momentum)) return TB_ERR_ARG;
    for (int32_t i = 0; i < n; i++)
        if (!tb_param_scale_ok(param_scale[i])) return TB_ERR_ARG;
    uint32_t state = *rng;
    for (int32_t i = 0; i < n; i++) {
        const float step = tb_sgd_direction(grad_b[i], grad_scale, momentum,
                                            velocity ? velocity + i : 0) *
                           (lr / param_scale[i]);
        /* |step| >= 2^33 saturates any int32 bias, so 2^33 loses nothing */
        const int64_t v =
            (int64_t)b[i] - tb_integral_to_i64(tb_stochastic_round(step, 8589934592.0f, &state));
        b[i] = (int32_t)(v < -TB_TRAINED_BIAS_LIMIT ? -TB_TRAINED_BIAS_LIMIT
                                                    : (v > TB_TRAINED_BIAS_LIMIT ? TB_TRAINED_BIAS_LIMIT : v));
    }
    *rng = state;
    return TB_OK;
}
