/* tinybridge native kernels: backward pass, loss and QAS update.
 *
 * Gradients (docs/kernels.md): an int8 tensor g in [-127, 127] with one power-of-two exponent
 * per tensor, value = g * 2^exp, the gradient of the loss with respect to the *dequantized*
 * activation. Kernels that sum many products write int32 accumulators (value = acc * 2^exp *
 * a documented scale); tb_grad_requantize_s32_s8 turns them back into an int8 gradient with
 * the smallest exponent that fits. Rounding is half away from zero; results saturate to
 * [-127, 127].
 *
 * int32 safety: |x + input_offset| <= 256, |w| <= 128 and |g| <= 127, so a weight or bias gradient
 * summed over at most TB_GRAD_MAX_POSITIONS output positions stays below 256 * 127 * 2^16 < 2^31,
 * and an input gradient summed over at most TB_GRAD_MAX_FAN_OUT (kernel taps x output channels)
 * products stays below 128 * 127 * 2^17 < 2^31. The weight- and input-gradient kernels reject
 * larger shapes (TB_ERR_ARG); tb_bias_grad_s8 requires them. 128x128 positions and 1024 channels
 * with 7x7 kernels are well inside both.
 *
 * Parsed by cffi: only typedefs, structs, enums and prototypes below the includes.
 */
#ifndef TB_TRAIN_H
#define TB_TRAIN_H
#include <stdint.h>
#include "tb_kernels.h"

enum {
    TB_GRAD_MAX_POSITIONS = 65536,   /* output positions summed by a weight or bias gradient */
    TB_GRAD_MAX_FAN_OUT = 131072,    /* kernel_h * kernel_w * out_c summed by an input gradient */
    /* a trained bias saturates here, so that bias + 255 * 128 * fan_in stays an int32 in the forward
     * kernels for every fan_in below 2^15 (the loader checks the fan-in) */
    TB_TRAINED_BIAS_LIMIT = 1 << 30
};

/* ---------------- gradient tensors ---------------- */

/* Pass-through mask of a clamped int8 output: bit i (LSB first) is 1 iff act_min < y[i] < act_max,
 * i.e. where the folded ReLU/ReLU6 or int8 saturation did not clamp. mask: (n + 7) / 8 bytes. */
void tb_clamp_mask_pack_s8(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max,
                           uint8_t *mask);

/* g[i] = 0 where mask bit i is 0. In place. */
void tb_grad_apply_mask_s8(int8_t *g, const uint8_t *mask, int32_t n);

/* The same on int32 accumulators. Mask an input gradient with the clamp mask of the layer that
 * produced that input *before* tb_grad_requantize_s32_s8, so that the exponent is chosen from the
 * values that survive (masking afterwards can leave them only a few significant bits). */
void tb_grad_apply_mask_s32(int32_t *acc, const uint8_t *mask, int32_t n);

/* int32 accumulators (value acc * 2^acc_exp) -> int8 gradient; returns its exponent:
 * acc_exp + bitlen(max |acc|) - 7, so that max |out| <= 127. out may alias acc (in-place
 * compaction is safe). All-zero input gives exponent acc_exp. */
int32_t tb_grad_requantize_s32_s8(const int32_t *acc, int32_t n, int32_t acc_exp, int8_t *out);

/* out = a * 2^a_exp + b * 2^b_exp, requantized to int8; returns the exponent. out may alias a or b.
 * Exact before the final rounding when the exponents differ by at most 23; beyond that the smaller
 * addend is rounded at 2^(larger exponent - 23), far below the result's step. An all-zero addend's
 * exponent is ignored. */
int32_t tb_grad_add_s8(const int8_t *a, int32_t a_exp, const int8_t *b, int32_t b_exp, int32_t n,
                       int8_t *out);

/* h[p][c] = g[p][c] * s_w[c] with s_w[c] = mult[c] * 2^(shift[c] - 31) (a weight scale in
 * TFLite multiplier form, mult 0 or in [2^30, 2^31)), requantized to int8; returns h's exponent.
 * Feeds the input-gradient kernels, whose sums are then plain integer sums of w * h.
 * n_pos = h * w of the tensor. mult is used to 16 bits (relative error <= 2^-15). h may alias g. */
int32_t tb_grad_scale_channels_s8(const int8_t *g, int32_t g_exp, int32_t n_pos, int32_t c,
                                  const int32_t *mult, const int32_t *shift, int8_t *h);

/* ---------------- loss ---------------- */

/* Softmax cross-entropy of one int8 logit vector (value = scale * (q - zero_point)) against label.
 * Returns the loss (natural log); writes d loss / d logit as an int8 gradient (*grad_exp), zero
 * where mask (the logits' clamp mask, NULL: none) is 0, the exponent chosen after masking.
 * Deterministic: its own exp/log, identical on every target. The zero point cancels (softmax is
 * shift-invariant). Bad arguments (n < 1, label outside [0, n), scale not finite and > 0) return
 * -1 and write nothing. */
float tb_softmax_cross_entropy_s8(const int8_t *logits, int32_t n, float scale,
                                  int32_t zero_point, int32_t label, const uint8_t *mask,
                                  int8_t *grad, int32_t *grad_exp);

/* ---------------- parameter gradients ----------------
 * g: output gradient (HWC, exponent g_exp, already masked). sel: the trained input channels
 * (sorted, distinct; for depthwise, the trained channels). Results are int32 sums; their value
 * is acc * 2^g_exp * x_scale for weights and acc * 2^g_exp for biases. */

/* grad_b[k] = sum_p g[p][k]. n_pos <= TB_GRAD_MAX_POSITIONS. */
void tb_bias_grad_s8(const int8_t *g, int32_t n_pos, int32_t c, int32_t *grad_b);

/* grad_w [c_end - c_begin][n_sel]: sum_p (x[p][sel[j]] + input_offset) * g[p][c] */
tb_status tb_pointwise_weight_grad_s8(int32_t n_pos, int32_t in_c, const int8_t *x,
                                      int32_t input_offset, int32_t out_c, const int8_t *g,
                                      const int32_t *sel, int32_t n_sel,
                                      int32_t c_begin, int32_t c_end, int32_t *grad_w);

/* grad_w [c_end - c_begin][kh][kw][n_sel] */
tb_status tb_conv2d_weight_grad_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                   tb_shape out, const int8_t *g,
                                   const int32_t *sel, int32_t n_sel,
                                   int32_t c_begin, int32_t c_end, int32_t *grad_w);

/* grad_w [kh][kw][n_sel] for channels sel */
tb_status tb_depthwise_weight_grad_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                      tb_shape out, const int8_t *g,
                                      const int32_t *sel, int32_t n_sel, int32_t *grad_w);

/* ---------------- input gradients ----------------
 * h: output gradient scaled per channel by tb_grad_scale_channels_s8 (exponent h_exp). acc: int32
 * [in.h][in.w][in.c], value acc * 2^h_exp; requantize with tb_grad_requantize_s32_s8. */

/* acc [n_pos][in_c] = sum_c w[c][i] * h[p][c]; pointwise and fully connected (n_pos = 1). */
int32_t tb_pointwise_input_grad_s8_scratch_bytes(int32_t out_c);
tb_status tb_pointwise_input_grad_s8(int32_t n_pos, int32_t in_c, int32_t out_c,
                                     const int8_t *h, const int8_t *w, int32_t *acc,
                                     void *scratch);

tb_status tb_conv2d_input_grad_s8(const tb_conv_params *p, tb_shape in, tb_shape out,
                                  const int8_t *h, const int8_t *w, int32_t *acc);

tb_status tb_depthwise_input_grad_s8(const tb_conv_params *p, tb_shape in, tb_shape out,
                                     const int8_t *h, const int8_t *w, int32_t *acc);

/* Global average pool: gx[p][c] = g[c] / (in.h * in.w) for every position, rounded half away from
 * zero at the exponent that puts max |gx| in [64, 128); returns gx's exponent. in.h * in.w <= 2^23. */
int32_t tb_avgpool_global_input_grad_s8(tb_shape in, const int8_t *g, int32_t g_exp, int8_t *gx);

/* ---------------- update (QAS-scaled SGD) ----------------
 * Each parameter moves as float SGD moves its dequantized value (paper Eq. 2), in float32:
 *   v = momentum * v + grad_scale * (float)grad[i]   (v = grad_scale * (float)grad[i] if
 *                                                      velocity == NULL)
 *   param[i] = sat(param[i] - stochastic_round(v * (lr / param_scale[channel])))
 * grad_scale turns the int32 gradient into d loss / d (dequantized parameter): 2^g_exp * x_scale for
 * weights, 2^g_exp for biases. param_scale[channel] is the parameter's quantization scale, indexed by
 * absolute output channel: s_w[c] for weights, x_scale * s_w[c] for biases.
 * grad_w and velocity have exactly the layout of the gradient chunk being applied (that of the
 * matching weight-gradient kernel); velocity is float32, in units of d loss / d parameter.
 * stochastic_round(s) = floor(s) + 1 with probability s - floor(s), from the top 24 bits of one
 * xorshift32 step of *rng per element, in grad_w's memory order; *rng must be nonzero.
 * Weights saturate to [-127, 127], biases to int32 (never wrap). A NaN step leaves the parameter.
 * Bad arguments (shapes, sel, lr < 0, momentum < 0, a non-finite scalar or a param_scale not
 * finite and > 0) return TB_ERR_ARG before anything is written. */

/* OHWI weights w [out_c][taps][in_c] (pointwise and fully connected: taps = 1), output channels
 * c_begin..c_end-1, input channels sel: grad_w and velocity [c_end - c_begin][taps][n_sel]. */
tb_status tb_sgd_update_ohwi_s8(int8_t *w, int32_t out_c, int32_t taps, int32_t in_c,
                                const int32_t *sel, int32_t n_sel, int32_t c_begin, int32_t c_end,
                                const int32_t *grad_w, float grad_scale, const float *param_scale,
                                float lr, float momentum, float *velocity, uint32_t *rng);

/* depthwise weights w [taps][ch], channels sel: grad_w and velocity [taps][n_sel]. */
tb_status tb_sgd_update_depthwise_s8(int8_t *w, int32_t taps, int32_t ch, const int32_t *sel,
                                     int32_t n_sel, const int32_t *grad_w, float grad_scale,
                                     const float *param_scale, float lr, float momentum,
                                     float *velocity, uint32_t *rng);

/* biases b [n]: grad_b, velocity and param_scale [n]; saturate to +-TB_TRAINED_BIAS_LIMIT. */
tb_status tb_sgd_update_bias_s32(int32_t *b, int32_t n, const int32_t *grad_b, float grad_scale,
                                 const float *param_scale, float lr, float momentum,
                                 float *velocity, uint32_t *rng);

#endif
