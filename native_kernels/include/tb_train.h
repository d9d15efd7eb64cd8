/* tinybridge native kernels: backward pass, loss and QAS update.
 *
 * Gradients (docs/kernels.md): an int8 tensor g in [-127, 127] with one power-of-two exponent
 * per tensor, value = g * 2^exp, the gradient of the loss with respect to the *dequantized*
 * activation. Kernels that sum many products write int32 accumulators (value = acc * 2^exp *
 * a documented scale); tb_grad_requantize_s32_s8 turns them back into an int8 gradient with
 * the smallest exponent that fits. Every integer sum is bounded to fit int32 (docs/kernels.md).
 * Rounding is half away from zero; results saturate to [-127, 127].
 *
 * Parsed by cffi: only typedefs, structs and prototypes below the includes.
 */
#ifndef TB_TRAIN_H
#define TB_TRAIN_H
#include <stdint.h>
#include "tb_kernels.h"

/* ---------------- gradient tensors ---------------- */

/* Pass-through mask of a clamped int8 output: bit i (LSB first) is 1 iff act_min < y[i] < act_max,
 * i.e. where the folded ReLU/ReLU6 or int8 saturation did not clamp. mask: (n + 7) / 8 bytes. */
void tb_clamp_mask_pack_s8(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max,
                           uint8_t *mask);

/* g[i] = 0 where mask bit i is 0. In place. */
void tb_grad_apply_mask_s8(int8_t *g, const uint8_t *mask, int32_t n);

/* int32 accumulators (value acc * 2^acc_exp) -> int8 gradient; returns its exponent:
 * acc_exp + bitlen(max |acc|) - 7, so that max |out| <= 127. out may alias acc (in-place
 * compaction is safe). All-zero input gives exponent acc_exp. */
int32_t tb_grad_requantize_s32_s8(const int32_t *acc, int32_t n, int32_t acc_exp, int8_t *out);

/* out = a * 2^a_exp + b * 2^b_exp, requantized to int8; returns the exponent. out may alias a or b. */
int32_t tb_grad_add_s8(const int8_t *a, int32_t a_exp, const int8_t *b, int32_t b_exp, int32_t n,
                       int8_t *out);

/* h[p][c] = g[p][c] * s_w[c] with s_w[c] = mult[c] * 2^(shift[c] - 31) (a weight scale in
 * TFLite multiplier form), requantized to int8; returns h's exponent. Feeds the input-gradient
 * kernels, whose sums are then plain integer sums of w * h. n_pos = h * w of the tensor. */
int32_t tb_grad_scale_channels_s8(const int8_t *g, int32_t g_exp, int32_t n_pos, int32_t c,
                                  const int32_t *mult, const int32_t *shift, int8_t *h);

/* ---------------- loss ---------------- */

/* Softmax cross-entropy of one int8 logit vector (value = scale * (q - zero_point)) against label.
 * Returns the loss (natural log); writes d loss / d logit as an int8 gradient (*grad_exp).
 * Deterministic: its own exp/log, identical on every target. */
float tb_softmax_cross_entropy_s8(const int8_t *logits, int32_t n, float scale,
                                  int32_t zero_point, int32_t label, int8_t *grad,
                                  int32_t *grad_exp);

/* ---------------- parameter gradients ----------------
 * g: output gradient (HWC, exponent g_exp, already masked). sel: the trained input channels
 * (sorted, distinct; for depthwise, the trained channels). Results are int32 sums; their value
 * is acc * 2^g_exp * x_scale for weights and acc * 2^g_exp for biases. */

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

int32_t tb_pointwise_input_grad_s8_scratch_bytes(int32_t out_c);
tb_status tb_pointwise_input_grad_s8(int32_t n_pos, int32_t in_c, int32_t out_c,
                                     const int8_t *h, const int8_t *w, int32_t *acc,
                                     void *scratch);

tb_status tb_conv2d_input_grad_s8(const tb_conv_params *p, tb_shape in, tb_shape out,
                                  const int8_t *h, const int8_t *w, int32_t *acc);

tb_status tb_depthwise_input_grad_s8(const tb_conv_params *p, tb_shape in, tb_shape out,
                                     const int8_t *h, const int8_t *w, int32_t *acc);

/* Global average pool: gx[p][c] = g[c] / (in.h * in.w) for every position; returns gx's exponent. */
int32_t tb_avgpool_global_input_grad_s8(tb_shape in, const int8_t *g, int32_t g_exp, int8_t *gx);

/* ---------------- update (QAS-scaled SGD) ----------------
 * Each parameter moves as float SGD moves its dequantized value (paper Eq. 2):
 *   v = momentum * v + grad_scale * grad[i]      (v only if velocity != NULL)
 *   param[i] -= stochastic_round(lr * v / param_scale[channel])
 * weights saturate to [-127, 127], biases to int32. rng: xorshift32 state, advanced per element.
 * grad_w layout is that of the matching weight-gradient kernel; sel the same trained channels. */

/* OHWI weights [out_c][taps][in_c] (pointwise and fully connected: taps = 1); channels c_begin..c_end */
void tb_sgd_update_ohwi_s8(int8_t *w, int32_t taps, int32_t in_c, const int32_t *sel,
                           int32_t n_sel, int32_t c_begin, int32_t c_end, const int32_t *grad_w,
                           float grad_scale, const float *param_scale, float lr, float momentum,
                           float *velocity, uint32_t *rng);

/* depthwise weights [taps][ch]; grad_w [taps][n_sel] */
void tb_sgd_update_depthwise_s8(int8_t *w, int32_t taps, int32_t ch, const int32_t *sel,
                                int32_t n_sel, const int32_t *grad_w, float grad_scale,
                                const float *param_scale, float lr, float momentum,
                                float *velocity, uint32_t *rng);

void tb_sgd_update_bias_s32(int32_t *b, int32_t n, const int32_t *grad_b, float grad_scale,
                            const float *param_scale, float lr, float momentum, float *velocity,
                            uint32_t *rng);

#endif
