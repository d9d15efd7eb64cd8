/* device/port.h for the STM32F746G-DISCO: the `stm32f746g_disco` device.
 *
 * Clock: 25 MHz HSE crystal -> PLL (M 25, N 432, P 2, Q 9): 216 MHz core (over-drive on, 7 flash
 * wait states), APB2 108 MHz, APB1 54 MHz, 48 MHz for the RNG. I- and D-cache on.
 * Link: USART1 on PA9 (TX) / PB7 (RX), the ST-LINK's virtual COM port, 115200 8N1 at boot, faster
 * by SET_BAUD. DMA2 stream 5 (channel 4, USART1_RX) writes received bytes into a circular ring in
 * the DTCM sized for `window` XFER_DATA frames, with no CPU work per byte (nor any stall while the
 * flash is busy erasing); the reader's position chases the DMA's, which is the ring size minus
 * NDTR. The line's idle interrupt and the ring's half/full interrupts only wake the core; their
 * handlers and the vector table run from RAM so that a busy flash does not delay them. Transmit
 * polls TXE.
 * Counter: the DWT cycle counter, extended to 64 bits by a 20 Hz SysTick (it wraps every 19.9 s).
 * Flash: sectors 3-7 of the internal flash (link.ld), the same layout as the sim and the qemu board.
 * Entropy: the RNG. Reset: SYSRESETREQ. */
#include <string.h>

#include "frame.h"
#include "port.h"
#include "stm32f746.h"

#define RAMFUNC __attribute__((section(".ramfunc"), noinline))

#define HSE_HZ 25000000u
#define HSI_HZ 16000000u
static uint32_t sysclk_hz = HSI_HZ, pclk2_hz = HSI_HZ;

#define WINDOW 4
#define MAX_WIRE_FRAME (TB_MAX_BODY + TB_MAX_BODY / 254 + 2)
#define RX_RING_BYTES (WINDOW * MAX_WIRE_FRAME + 256)

/* The storage flash: sectors 3-7 (sector 3 of 32 KB, 4 of 128 KB, 5-7 of 256 KB) */
#define STORAGE_BASE 0x08018000u
#define STORAGE_BYTES 0x000E8000u
#define STORAGE_FIRST_SECTOR 3u
static const uint32_t sector_start[] = {0x00000, 0x08000, 0x28000, 0x68000, 0xA8000, STORAGE_BYTES};

static const tb_board board = {
    .name = "stm32f746g-disco",
    .counter_unit = TB_COUNTER_CYCLES,
    .window = WINDOW,
    .sector_count = 5,
    .sector_start = sector_start,
};

const tb_board *tb_port_board(void) { return &board; }

/* Kept across a reset (link.ld .noinit; random after power-on, hence the magic). */
static struct {
    uint32_t magic, boots, fault_pc, fault_status, fault_code;
} noinit __attribute__((section(".noinit")));
#define NOINIT_MAGIC 0x494E4254u

static inline void irq_disable(void) { __asm volatile("cpsid i" ::: "memory"); }
static inline void irq_enable(void) { __asm volatile("cpsie i" ::: "memory"); }
static inline uint32_t irq_save(void)
{
    uint32_t primask;
    __asm volatile("mrs %0, primask\n cpsid i" : "=r"(primask)::"memory");
    return primask;
}
static inline void irq_restore(uint32_t primask) { __asm volatile("msr primask, %0" ::"r"(primask) : "memory"); }

/* ---------------- clock, caches ---------------- */

static int wait_set(volatile uint32_t *reg, uint32_t mask)
{
    for (uint32_t i = 0; i < 1000000u; i++)
        if (*reg & mask)
            return 1;
    return 0;
}

static void clock_init(void)
{
    RCC_APB1ENR |= RCC_APB1ENR_PWR;
    (void)RCC_APB1ENR;
    PWR_CR1 |= PWR_CR1_VOS_SCALE1;
    RCC_CR |= RCC_CR_HSEON;
    if (!wait_set(&RCC_CR, RCC_CR_HSERDY))
        return; /* no crystal: stay on the 16 MHz HSI */
    RCC_PLLCFGR = 25u | 432u << 6 | 0u << 16 /* P = 2 */ | RCC_PLLCFGR_SRC_HSE | 9u << 24;
    RCC_CR |= RCC_CR_PLLON;
    PWR_CR1 |= PWR_CR1_ODEN; /* over-drive, needed above 180 MHz */
    wait_set(&PWR_CSR1, PWR_CSR1_ODRDY);
    PWR_CR1 |= PWR_CR1_ODSWEN;
    wait_set(&PWR_CSR1, PWR_CSR1_ODSWRDY);
    if (!wait_set(&RCC_CR, RCC_CR_PLLRDY))
        return;
    FLASH_ACR = 7u | FLASH_ACR_PRFTEN | FLASH_ACR_ARTEN; /* 7 wait states at 216 MHz, 2.7-3.6 V */
    while ((FLASH_ACR & 0xFu) != 7u) {
    }
    /* AHB /1, APB1 /4 (54 MHz), APB2 /2 (108 MHz) */
    RCC_CFGR = (RCC_CFGR & ~0xFCF0u) | 5u << 10 | 4u << 13;
    RCC_CFGR = (RCC_CFGR & ~3u) | 2u; /* SYSCLK = PLL */
    while (((RCC_CFGR >> 2) & 3u) != 2u) {
    }
    sysclk_hz = HSE_HZ / 25u * 432u / 2u;
    pclk2_hz = sysclk_hz / 2u;
}

static void caches_enable(void)
{
    __asm volatile("dsb\n isb" ::: "memory");
    SCB_ICIALLU = 0;
    __asm volatile("dsb\n isb" ::: "memory");
    SCB_CCR |= SCB_CCR_IC;
    /* invalidate the whole D-cache (set/way: 32-byte lines, 4 ways) before turning it on */
    SCB_CSSELR = 0;
    __asm volatile("dsb" ::: "memory");
    uint32_t ccsidr = SCB_CCSIDR;
    uint32_t sets = (ccsidr >> 13) & 0x7FFFu, ways = (ccsidr >> 3) & 0x3FFu;
    for (uint32_t s = 0; s <= sets; s++)
        for (uint32_t w = 0; w <= ways; w++)
            SCB_DCISW = (s << 5) | (w << 30);
    __asm volatile("dsb" ::: "memory");
    SCB_CCR |= SCB_CCR_DC;
    __asm volatile("dsb\n isb" ::: "memory");
}

/* The flash is write-through cached: after an erase or program, drop the stale lines. */
static void dcache_invalidate(uint32_t addr, uint32_t len)
{
    __asm volatile("dsb" ::: "memory");
    for (uint32_t a = addr & ~31u; a < addr + len; a += 32)
        SCB_DCIMVAC = a;
    __asm volatile("dsb\n isb" ::: "memory");
}

/* ---------------- link ---------------- */

/* Written by DMA only (the CPU never writes it, so the DTCM needs no ordering beyond NDTR's). */
static uint8_t rx_ring[RX_RING_BYTES] __attribute__((section(".dtcm_dma"), aligned(4)));
static uint32_t rx_tail; /* the next byte to read */

/* Where the DMA writes next: NDTR counts down from RX_RING_BYTES to 1, then reloads (circular). */
static uint32_t rx_head(void)
{
    return RX_RING_BYTES - DMA2_S5NDTR;
}

/* These only end the core's WFI (tb_port_wait_input). Line errors (overrun detection is off)
 * reach the host as a bad frame CRC. */
RAMFUNC void USART1_IRQHandler(void)
{
    USART1_ICR = USART_ISR_IDLE | USART_ISR_ERRORS;
}

RAMFUNC void DMA2_Stream5_IRQHandler(void)
{
    DMA2_HIFCR = DMA_HIFCR_STREAM5;
}

size_t tb_port_read(uint8_t *buf, size_t cap)
{
    const uint32_t head = rx_head();
    __asm volatile("dmb" ::: "memory"); /* the bytes before head are in the ring */
    size_t n = 0;
    while (n < cap && rx_tail != head) {
        buf[n++] = rx_ring[rx_tail];
        rx_tail = rx_tail + 1 == RX_RING_BYTES ? 0 : rx_tail + 1;
    }
    return n;
}

void tb_port_wait_input(void)
{
    irq_disable();
    if (rx_head() == rx_tail)
        __asm volatile("dsb\n wfi" ::: "memory"); /* a pending interrupt still ends it */
    irq_enable();
}

void tb_port_write(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        while (!(USART1_ISR & USART_ISR_TXE)) {
        }
        USART1_TDR = data[i];
    }
}

static void tx_drain(void)
{
    while (!(USART1_ISR & USART_ISR_TC)) {
    }
}

static uint32_t baud_divider(uint32_t baud) { return (pclk2_hz + baud / 2u) / baud; }

int tb_port_baud_supported(uint32_t baud)
{
    if (baud < 1200u || baud > pclk2_hz / 16u)
        return 0;
    uint32_t div = baud_divider(baud);
    uint32_t actual = pclk2_hz / div;
    uint32_t err = actual > baud ? actual - baud : baud - actual;
    return div >= 16u && div <= 0xFFFFu && err * 50u <= baud; /* within 2 % */
}

void tb_port_set_baud(uint32_t baud)
{
    tx_drain();
    USART1_CR1 &= ~USART_CR1_UE;
    USART1_BRR = baud_divider(baud);
    USART1_CR1 |= USART_CR1_UE;
}

static void uart_init(void)
{
    RCC_AHB1ENR |= RCC_AHB1ENR_GPIOA | RCC_AHB1ENR_GPIOB | RCC_AHB1ENR_DMA2;
    RCC_APB2ENR |= RCC_APB2ENR_USART1;
    (void)RCC_APB2ENR;
    RCC_DCKCFGR2 &= ~3u; /* USART1 clock = PCLK2 */
    /* PA9 = USART1_TX, PB7 = USART1_RX: alternate function 7, RX pulled up */
    GPIO_MODER(GPIOA_BASE) = (GPIO_MODER(GPIOA_BASE) & ~(3u << 18)) | 2u << 18;
    GPIO_OSPEEDR(GPIOA_BASE) |= 2u << 18;
    GPIO_AFRH(GPIOA_BASE) = (GPIO_AFRH(GPIOA_BASE) & ~(0xFu << 4)) | 7u << 4;
    GPIO_MODER(GPIOB_BASE) = (GPIO_MODER(GPIOB_BASE) & ~(3u << 14)) | 2u << 14;
    GPIO_PUPDR(GPIOB_BASE) = (GPIO_PUPDR(GPIOB_BASE) & ~(3u << 14)) | 1u << 14;
    GPIO_AFRL(GPIOB_BASE) = (GPIO_AFRL(GPIOB_BASE) & ~(0xFu << 28)) | 7u << 28;
    USART1_CR1 = 0;
    USART1_BRR = baud_divider(115200u);
    /* the receive DMA: peripheral to memory, bytes, the ring circular (RM0385 8.3.18) */
    DMA2_S5CR = 0;
    while (DMA2_S5CR & DMA_SCR_EN) {
    }
    DMA2_HIFCR = DMA_HIFCR_STREAM5;
    DMA2_S5PAR = (uint32_t)&USART1_RDR;
    DMA2_S5M0AR = (uint32_t)rx_ring;
    DMA2_S5NDTR = RX_RING_BYTES;
    DMA2_S5FCR = 0;
    DMA2_S5CR = DMA_SCR_CHSEL(4) | DMA_SCR_MINC | DMA_SCR_CIRC | DMA_SCR_HTIE | DMA_SCR_TCIE;
    DMA2_S5CR |= DMA_SCR_EN;
    rx_tail = 0;
    USART1_CR3 = USART_CR3_DMAR | USART_CR3_OVRDIS;
    USART1_CR1 = USART_CR1_TE | USART_CR1_RE | USART_CR1_IDLEIE | USART_CR1_UE;
    NVIC_ISER(USART1_IRQ / 32) = 1u << (USART1_IRQ % 32);
    NVIC_ISER(DMA2_STREAM5_IRQ / 32) = 1u << (DMA2_STREAM5_IRQ % 32);
}

/* ---------------- counter ---------------- */

static volatile uint32_t cycles_hi, cycles_last;

static RAMFUNC uint64_t cycles_now(void) /* with interrupts masked, at least every 19.9 s */
{
    uint32_t low = DWT_CYCCNT;
    if (low < cycles_last)
        cycles_hi++;
    cycles_last = low;
    return (uint64_t)cycles_hi << 32 | low;
}

RAMFUNC void SysTick_Handler(void) { cycles_now(); }

uint64_t tb_port_counter(void)
{
    uint32_t primask = irq_save();
    uint64_t now = cycles_now();
    irq_restore(primask);
    return now;
}

static void counter_init(void)
{
    DEMCR |= DEMCR_TRCENA;
    DWT_LAR = 0xC5ACCE55u;
    DWT_CYCCNT = 0;
    DWT_CTRL |= 1u;
    cycles_hi = cycles_last = 0;
    SYST_RVR = sysclk_hz / 20u - 1u; /* 20 Hz, < 2^24 at 216 MHz */
    SYST_CVR = 0;
    SYST_CSR = 7u; /* processor clock, interrupt, enable */
}

/* ---------------- flash ---------------- */

const uint8_t *tb_port_flash(void) { return (const uint8_t *)STORAGE_BASE; }

static void flash_unlock(void)
{
    if (FLASH_CR & FLASH_CR_LOCK) {
        FLASH_KEYR = FLASH_KEY1;
        FLASH_KEYR = FLASH_KEY2;
    }
    FLASH_SR = FLASH_SR_ERRORS | FLASH_SR_EOP;
}

static int flash_wait(void)
{
    __asm volatile("dsb" ::: "memory");
    while (FLASH_SR & FLASH_SR_BSY) {
    }
    return (FLASH_SR & FLASH_SR_ERRORS) ? -1 : 0;
}

int tb_port_flash_erase(uint32_t offset, uint32_t len)
{
    if (offset >= STORAGE_BYTES || len > STORAGE_BYTES - offset)
        return -1;
    int rc = 0;
    flash_unlock();
    for (uint32_t s = 0; s < board.sector_count && rc == 0; s++) {
        if (!(sector_start[s + 1] > offset && sector_start[s] < offset + len))
            continue;
        FLASH_CR = FLASH_CR_SER | FLASH_CR_SNB(STORAGE_FIRST_SECTOR + s) | FLASH_CR_PSIZE_X32;
        FLASH_CR |= FLASH_CR_STRT;
        rc = flash_wait();
        dcache_invalidate(STORAGE_BASE + sector_start[s], sector_start[s + 1] - sector_start[s]);
    }
    FLASH_CR = FLASH_CR_LOCK;
    return rc;
}

int tb_port_flash_program(uint32_t offset, const uint8_t *data, uint32_t len)
{
    if (offset > STORAGE_BYTES || len > STORAGE_BYTES - offset)
        return -1;
    uint32_t addr = STORAGE_BASE + offset, i = 0;
    int rc = 0;
    flash_unlock();
    while (i < len && rc == 0) {
        if (((addr + i) & 3u) == 0 && len - i >= 4) { /* aligned words: 32-bit programming */
            uint32_t word;
            memcpy(&word, data + i, 4);
            FLASH_CR = FLASH_CR_PG | FLASH_CR_PSIZE_X32;
            *(volatile uint32_t *)(addr + i) = word;
            i += 4;
        } else { /* the unaligned edges byte by byte */
            FLASH_CR = FLASH_CR_PG | FLASH_CR_PSIZE_X8;
            *(volatile uint8_t *)(addr + i) = data[i];
            i += 1;
        }
        rc = flash_wait();
    }
    FLASH_CR = FLASH_CR_LOCK;
    dcache_invalidate(addr, len);
    if (rc == 0 && memcmp((const void *)addr, data, len) != 0)
        rc = -1; /* NOR: bits that were already 0 stay 0 */
    return rc;
}

/* ---------------- the rest ---------------- */

uint32_t tb_port_entropy(void)
{
    RCC_AHB2ENR |= RCC_AHB2ENR_RNG;
    (void)RCC_AHB2ENR;
    RNG_CR |= RNG_CR_RNGEN;
    uint32_t x = DWT_CYCCNT ^ noinit.boots * 0x9E3779B9u;
    for (int tries = 0; tries < 4; tries++) {
        if (wait_set(&RNG_SR, RNG_SR_DRDY) && !(RNG_SR & RNG_SR_ERRORS)) {
            x ^= RNG_DR;
            break;
        }
        RNG_SR = 0; /* clear a seed/clock error and retry */
    }
    return x;
}

extern uint32_t _enoinit, _estack;
#define STACK_PAINT 0xC5C5C5C5u

void board_paint_stack(void)
{
    uint32_t *sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *p = &_enoinit; p < sp - 16; p++)
        *p = STACK_PAINT;
}

uint32_t tb_port_stack_high_water(void)
{
    const uint32_t *p = &_enoinit;
    while (p < &_estack && *p == STACK_PAINT)
        p++;
    return (uint32_t)((uintptr_t)&_estack - (uintptr_t)p);
}

void tb_port_reset(void)
{
    tx_drain();
    __asm volatile("dsb" ::: "memory");
    SCB_AIRCR = SCB_AIRCR_SYSRESETREQ;
    __asm volatile("dsb" ::: "memory");
    for (;;) {
    }
}

static void __attribute__((noreturn)) fail(uint32_t pc, uint32_t code)
{
    noinit.fault_pc = pc;
    noinit.fault_status = SCB_CFSR;
    noinit.fault_code = code;
    tb_port_reset();
    for (;;) {
    }
}

void board_fault(const uint32_t *frame) { fail(frame[6], 0xFA17u); }

__attribute__((naked)) void HardFault_Handler(void)
{
    __asm volatile("tst lr, #4\n ite eq\n mrseq r0, msp\n mrsne r0, psp\n b board_fault\n");
}

void board_exit(int code) { fail(0, (uint32_t)code); }

int board_last_fault(uint32_t *pc, uint32_t *status, uint32_t *code)
{
    if (!noinit.fault_code)
        return 0;
    *pc = noinit.fault_pc;
    *status = noinit.fault_status;
    *code = noinit.fault_code;
    noinit.fault_code = 0;
    return 1;
}

/* the vector table, copied to RAM (link.ld .ram_vectors) */
extern void (*const vector_table[16 + IRQ_COUNT])(void);
static void (*ram_vectors[16 + IRQ_COUNT])(void) __attribute__((section(".ram_vectors"), aligned(512)));

void board_init(void)
{
    if (noinit.magic != NOINIT_MAGIC) { /* power-on: RAM is random */
        noinit.magic = NOINIT_MAGIC;
        noinit.boots = 0;
        noinit.fault_code = 0;
    }
    noinit.boots++;
    memcpy(ram_vectors, vector_table, sizeof ram_vectors);
    __asm volatile("dsb" ::: "memory");
    SCB_VTOR = (uint32_t)ram_vectors;
    __asm volatile("dsb\n isb" ::: "memory");
    clock_init();
    caches_enable();
    uart_init();
    counter_init();
    irq_enable();
}
