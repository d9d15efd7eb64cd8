#include "profile.h"

#include <string.h>

#include "port.h"

/* The last run's profile, and the part of the next run done ahead of it: the first layers of a
 * streamed input, computed while its data arrives (staged, then added to the run that consumes
 * that input). */
static tb_profile profile, staged;
static tb_profile *active = &profile;
static uint64_t staged_total, extra;
static uint16_t current;
static uint64_t start, last;

void tb_profile_begin(uint8_t run, uint16_t n_ops)
{
    memset(&profile, 0, sizeof profile);
    profile.run = run;
    profile.n_ops = n_ops;
    memcpy(profile.cost, staged.cost, sizeof profile.cost);
    profile.outside = staged.outside;
    extra = staged_total;
    tb_profile_stage_clear();
    active = &profile;
    current = TB_PROFILE_OUTSIDE;
    start = last = tb_port_counter();
}

static void charge(uint32_t *bucket, uint64_t amount)
{
    *bucket = amount >= UINT32_MAX - *bucket ? UINT32_MAX : *bucket + (uint32_t)amount;
}

uint16_t tb_profile_switch(uint16_t bucket)
{
    const uint64_t now = tb_port_counter();
    charge(current == TB_PROFILE_OUTSIDE ? &active->outside : &active->cost[current / 2u][current % 2u],
           now - last);
    last = now;
    const uint16_t previous = current;
    current = bucket;
    return previous;
}

uint64_t tb_profile_end(void)
{
    tb_profile_switch(TB_PROFILE_OUTSIDE);
    profile.total = last - start + extra;
    return profile.total;
}

void tb_profile_clear(void)
{
    profile.run = TB_RUN_NONE;
    profile.n_ops = 0;
    tb_profile_stage_clear();
}

const tb_profile *tb_profile_last(void)
{
    return &profile;
}

void tb_profile_stage_clear(void)
{
    memset(staged.cost, 0, sizeof staged.cost);
    staged.outside = 0;
    staged_total = 0;
}

void tb_profile_stage_resume(void)
{
    active = &staged;
    current = TB_PROFILE_OUTSIDE;
    start = last = tb_port_counter();
}

void tb_profile_stage_pause(void)
{
    tb_profile_switch(TB_PROFILE_OUTSIDE);
    staged_total += last - start;
    active = &profile;
}
