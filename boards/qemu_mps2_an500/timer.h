/* CMSDK APB TIMER0 as a free-running down counter at the 25 MHz system clock. Under QEMU with
 * -icount shift=0,sleep=off one instruction takes 1 ns of virtual time, so one tick = 40
 * instructions, exactly and repeatably. */
#ifndef TIMER_H
#define TIMER_H
#include <stdint.h>

#define TIMER_INSTRUCTIONS_PER_TICK 40u

static inline void timer_start(void)
{
    volatile uint32_t *t0 = (volatile uint32_t *)0x40000000u;
    t0[0] = 0;           /* CTRL: stop */
    t0[2] = 0xFFFFFFFFu; /* RELOAD */
    t0[1] = 0xFFFFFFFFu; /* VALUE */
    t0[0] = 1;           /* CTRL: enable */
}

static inline uint32_t timer_ticks(void)
{
    return 0xFFFFFFFFu - *(volatile uint32_t *)0x40000004u;
}

#endif
