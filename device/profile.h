/* The per-op profile of the last executor run (INFER or TRAIN_STEP): how much of the board's
 * counter (tb_port_counter) each op's forward and backward pass took, and what went to no op
 * (setup, the loss). The counter is charged to one bucket at a time, so the buckets add up to
 * the run's total exactly. docs/protocol.md, PROFILE. */
#ifndef TB_PROFILE_H
#define TB_PROFILE_H
#include <stdint.h>

#define TB_PROFILE_MAX_OPS 255u /* a blob has fewer ops than tensors (at most 256) */

enum { TB_RUN_NONE = 0, TB_RUN_INFER = 1, TB_RUN_TRAIN_STEP = 2 };
enum { TB_PASS_FORWARD = 0, TB_PASS_BACKWARD = 1 };

/* A bucket: op * 2 + pass, or TB_PROFILE_OUTSIDE. */
#define TB_PROFILE_OUTSIDE 0xFFFFu
static inline uint16_t tb_profile_bucket(uint32_t op, uint32_t pass)
{
    return (uint16_t)(op * 2u + pass);
}

typedef struct {
    uint8_t run;       /* TB_RUN_* */
    uint16_t n_ops;
    uint64_t total;    /* the whole run, as STATS reports it */
    uint32_t outside;  /* of it: not inside any op */
    uint32_t cost[TB_PROFILE_MAX_OPS][2]; /* [op][pass], saturating at 2^32 - 1 */
} tb_profile;

/* Starts a run of a model with n_ops ops, charging the counter to TB_PROFILE_OUTSIDE. */
void tb_profile_begin(uint8_t run, uint16_t n_ops);
/* Charges the counter since the last switch to the current bucket and makes `bucket` current;
 * returns the bucket that was current (to switch back after a nested op). */
uint16_t tb_profile_switch(uint16_t bucket);
/* Ends the run: its total. */
uint64_t tb_profile_end(void);
/* Forgets the last run (its ops are those of a model no longer loaded). */
void tb_profile_clear(void);
const tb_profile *tb_profile_last(void);

/* Work of the next run done ahead of it (the first layers of a streamed input, while its data
 * arrives): between resume and pause the counter is charged to a staged profile, which the next
 * tb_profile_begin takes in (its entries and total include it). clear forgets it (a new input). */
void tb_profile_stage_clear(void);
void tb_profile_stage_resume(void);
void tb_profile_stage_pause(void);

#endif
