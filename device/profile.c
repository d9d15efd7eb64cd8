#include "profile.h"

#include <string.h>

#include "port.h"

static tb_profile profile;
static uint16_t current;
static uint64_t start, last;

void tb_profile_begin(uint8_t run, uint16_t n_ops)
{
    memset(&profile, 0, sizeof profile);
    profile.run = run;
    profile.n_ops = n_ops;
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
    charge(current == TB_PROFILE_OUTSIDE ? &profile.outside : &profile.cost[current / 2u][current % 2u],
           now - last);
    last = now;
    const uint16_t previous = current;
    current = bucket;
    return previous;
}

uint64_t tb_profile_end(void)
{
    tb_profile_switch(TB_PROFILE_OUTSIDE);
    profile.total = last - start;
    return profile.total;
}

void tb_profile_clear(void)
{
    profile.run = TB_RUN_NONE;
    profile.n_ops = 0;
}

const tb_profile *tb_profile_last(void)
{
    return &profile;
}
