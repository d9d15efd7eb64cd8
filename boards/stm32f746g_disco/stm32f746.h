/* STM32F746NG: the few registers the tinybridge board uses, from the reference manual (RM0385)
 * and the ARMv7-M architecture manual. No vendor headers. */
#ifndef STM32F746_H
#define STM32F746_H
#include <stdint.h>

#define REG32(addr) (*(volatile uint32_t *)(addr))

/* ---- RCC ---- */
#define RCC_BASE 0x40023800u
#define RCC_CR REG32(RCC_BASE + 0x00u)
#define RCC_CR_HSEON (1u << 16)
#define RCC_CR_HSERDY (1u << 17)
#define RCC_CR_PLLON (1u << 24)
#define RCC_CR_PLLRDY (1u << 25)
#define RCC_PLLCFGR REG32(RCC_BASE + 0x04u) /* M[5:0] N[14:6] P[17:16] SRC[22] Q[27:24] */
#define RCC_PLLCFGR_SRC_HSE (1u << 22)
#define RCC_CFGR REG32(RCC_BASE + 0x08u)    /* SW[1:0] SWS[3:2] HPRE[7:4] PPRE1[12:10] PPRE2[15:13] */
#define RCC_AHB1ENR REG32(RCC_BASE + 0x30u)
#define RCC_AHB1ENR_GPIOA (1u << 0)
#define RCC_AHB1ENR_GPIOB (1u << 1)
#define RCC_AHB1ENR_DMA2 (1u << 22)
#define RCC_AHB2ENR REG32(RCC_BASE + 0x34u)
#define RCC_AHB2ENR_RNG (1u << 6)
#define RCC_APB1ENR REG32(RCC_BASE + 0x40u)
#define RCC_APB1ENR_PWR (1u << 28)
#define RCC_APB2ENR REG32(RCC_BASE + 0x44u)
#define RCC_APB2ENR_USART1 (1u << 4)
#define RCC_DCKCFGR2 REG32(RCC_BASE + 0x90u) /* USART1SEL[1:0] = 0: PCLK2; CK48MSEL[27] = 0: PLLQ */

/* ---- PWR ---- */
#define PWR_BASE 0x40007000u
#define PWR_CR1 REG32(PWR_BASE + 0x00u)
#define PWR_CR1_VOS_SCALE1 (3u << 14)
#define PWR_CR1_ODEN (1u << 16)
#define PWR_CR1_ODSWEN (1u << 17)
#define PWR_CSR1 REG32(PWR_BASE + 0x04u)
#define PWR_CSR1_ODRDY (1u << 16)
#define PWR_CSR1_ODSWRDY (1u << 17)

/* ---- embedded flash interface ---- */
#define FLASH_BASE 0x40023C00u
#define FLASH_ACR REG32(FLASH_BASE + 0x00u) /* LATENCY[3:0], PRFTEN[8], ARTEN[9] */
#define FLASH_ACR_PRFTEN (1u << 8)
#define FLASH_ACR_ARTEN (1u << 9)
#define FLASH_KEYR REG32(FLASH_BASE + 0x04u)
#define FLASH_KEY1 0x45670123u
#define FLASH_KEY2 0xCDEF89ABu
#define FLASH_SR REG32(FLASH_BASE + 0x0Cu)
#define FLASH_SR_EOP (1u << 0)
#define FLASH_SR_ERRORS (0xF2u) /* OPERR, WRPERR, PGAERR, PGPERR, ERSERR */
#define FLASH_SR_BSY (1u << 16)
#define FLASH_CR REG32(FLASH_BASE + 0x10u)
#define FLASH_CR_PG (1u << 0)
#define FLASH_CR_SER (1u << 1)
#define FLASH_CR_SNB(n) ((uint32_t)(n) << 3)
#define FLASH_CR_PSIZE_X8 (0u << 8)
#define FLASH_CR_PSIZE_X32 (2u << 8)
#define FLASH_CR_STRT (1u << 16)
#define FLASH_CR_LOCK (1u << 31)

/* ---- GPIO ---- */
#define GPIOA_BASE 0x40020000u
#define GPIOB_BASE 0x40020400u
#define GPIO_MODER(base) REG32((base) + 0x00u)
#define GPIO_OSPEEDR(base) REG32((base) + 0x08u)
#define GPIO_PUPDR(base) REG32((base) + 0x0Cu)
#define GPIO_AFRL(base) REG32((base) + 0x20u)
#define GPIO_AFRH(base) REG32((base) + 0x24u)

/* ---- USART1 (IRQ 37) ---- */
#define USART1_BASE 0x40011000u
#define USART1_CR1 REG32(USART1_BASE + 0x00u)
#define USART_CR1_UE (1u << 0)
#define USART_CR1_RE (1u << 2)
#define USART_CR1_TE (1u << 3)
#define USART_CR1_IDLEIE (1u << 4)
#define USART1_CR3 REG32(USART1_BASE + 0x08u)
#define USART_CR3_DMAR (1u << 6)
#define USART_CR3_OVRDIS (1u << 12)
#define USART1_BRR REG32(USART1_BASE + 0x0Cu)
#define USART1_ISR REG32(USART1_BASE + 0x1Cu)
#define USART_ISR_ERRORS 0xFu /* PE, FE, NF, ORE */
#define USART_ISR_IDLE (1u << 4)
#define USART_ISR_TC (1u << 6)
#define USART_ISR_TXE (1u << 7)
#define USART1_ICR REG32(USART1_BASE + 0x20u)
#define USART1_RDR REG32(USART1_BASE + 0x24u)
#define USART1_TDR REG32(USART1_BASE + 0x28u)
#define USART1_IRQ 37

/* ---- DMA2 (RM0385 section 8): USART1_RX is request channel 4 of stream 5 (IRQ 68) ---- */
#define DMA2_BASE 0x40026400u
#define DMA2_HIFCR REG32(DMA2_BASE + 0x0Cu)       /* streams 4-7: flags clear */
#define DMA_HIFCR_STREAM5 (0x3Du << 6)           /* FEIF5, DMEIF5, TEIF5, HTIF5, TCIF5 */
#define DMA2_S5CR REG32(DMA2_BASE + 0x10u + 0x18u * 5u)
#define DMA_SCR_EN (1u << 0)
#define DMA_SCR_HTIE (1u << 3)
#define DMA_SCR_TCIE (1u << 4)
#define DMA_SCR_CIRC (1u << 8)
#define DMA_SCR_MINC (1u << 10)
#define DMA_SCR_CHSEL(n) ((uint32_t)(n) << 25)
#define DMA2_S5NDTR REG32(DMA2_BASE + 0x14u + 0x18u * 5u)
#define DMA2_S5PAR REG32(DMA2_BASE + 0x18u + 0x18u * 5u)
#define DMA2_S5M0AR REG32(DMA2_BASE + 0x1Cu + 0x18u * 5u)
#define DMA2_S5FCR REG32(DMA2_BASE + 0x24u + 0x18u * 5u) /* 0: direct mode, no FIFO */
#define DMA2_STREAM5_IRQ 68
/* ---- RNG (48 MHz from PLLQ) ---- */
#define RNG_BASE 0x50060800u
#define RNG_CR REG32(RNG_BASE + 0x00u)
#define RNG_CR_RNGEN (1u << 2)
#define RNG_SR REG32(RNG_BASE + 0x04u)
#define RNG_SR_DRDY (1u << 0)
#define RNG_SR_ERRORS (0x6u) /* CECS, SECS */
#define RNG_DR REG32(RNG_BASE + 0x08u)

/* ---- Cortex-M7 core ---- */
#define SYST_CSR REG32(0xE000E010u)
#define SYST_RVR REG32(0xE000E014u)
#define SYST_CVR REG32(0xE000E018u)
#define NVIC_ISER(n) REG32(0xE000E100u + 4u * (n))
#define SCB_VTOR REG32(0xE000ED08u)
#define SCB_AIRCR REG32(0xE000ED0Cu)
#define SCB_AIRCR_SYSRESETREQ (0x05FA0000u | 0x4u)
#define SCB_CCR REG32(0xE000ED14u)
#define SCB_CCR_DC (1u << 16)
#define SCB_CCR_IC (1u << 17)
#define SCB_CFSR REG32(0xE000ED28u)
#define SCB_CCSIDR REG32(0xE000ED80u)
#define SCB_CSSELR REG32(0xE000ED84u)
#define SCB_CPACR REG32(0xE000ED88u)
#define SCB_ICIALLU REG32(0xE000EF50u)
#define SCB_DCIMVAC REG32(0xE000EF5Cu)
#define SCB_DCISW REG32(0xE000EF60u)
#define DEMCR REG32(0xE000EDFCu)
#define DEMCR_TRCENA (1u << 24)
#define DWT_CTRL REG32(0xE0001000u)
#define DWT_CYCCNT REG32(0xE0001004u)
#define DWT_LAR REG32(0xE0001FB0u) /* Cortex-M7: unlock with 0xC5ACCE55 */

#define IRQ_COUNT 98 /* external interrupts of the STM32F74x */

/* ---- the board (port.c), for main.c and startup.c ---- */
void board_init(void);
void board_paint_stack(void);
int board_last_fault(uint32_t *pc, uint32_t *status, uint32_t *code);

#endif
