/* Power-loss tests of device/store.c: a checkpoint save and a model upload are cut short at every
 * point (flash programs in 8-byte units, as the F7 does with 64-bit parallelism; erases in 256-byte
 * steps); after each cut, what a boot would pick must be the old content or the new one, complete
 * and CRC-valid, never anything else. A small flash (1 KB erase blocks) stands in for the board's:
 * store.c only sees tb_port_board(). */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "port.h"
#include "store.h"

#define FLASH_BYTES (16u * 1024u)
#define BLOCK 1024u
#define PROGRAM_UNIT 8u

static uint8_t flash[FLASH_BYTES];
static long budget = -1; /* byte operations left before the power fails; -1: no failure */
static jmp_buf power_lost;

static const tb_board board = {
    .name = "test",
    .window = 1,
    .flash_size = FLASH_BYTES,
    .model_area = {4 * BLOCK, 12 * BLOCK},
    .model_split = 4 * BLOCK, /* slot A 4 KB, slot B 8 KB */
    .params = {{0, 2 * BLOCK}, {2 * BLOCK, 2 * BLOCK}},
};

const tb_board *tb_port_board(void) { return &board; }
const uint8_t *tb_port_flash(void) { return flash; }

static void spend(void)
{
    if (budget == 0)
        longjmp(power_lost, 1);
    if (budget > 0)
        budget--;
}

int tb_port_flash_erase(uint32_t offset, uint32_t len)
{
    for (uint32_t b = offset / BLOCK * BLOCK; b < offset + len; b += BLOCK)
        for (uint32_t i = 0; i < BLOCK; i += 256) {
            spend();
            memset(flash + b + i, 0xFF, 256);
        }
    return 0;
}

int tb_port_flash_program(uint32_t offset, const uint8_t *data, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++) {
        if ((offset + i) % PROGRAM_UNIT == 0 || i == 0)
            spend();
        flash[offset + i] &= data[i];
        if (flash[offset + i] != data[i])
            return -1;
    }
    return 0;
}

static int failures;
#define CHECK(cond, ...)                                                                                 \
    do {                                                                                                 \
        if (!(cond)) {                                                                                   \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                  \
            printf(__VA_ARGS__);                                                                         \
            printf("\n");                                                                                \
            failures++;                                                                                  \
        }                                                                                                \
    } while (0)

static void fill(uint8_t *buf, uint32_t n, uint32_t seed)
{
    for (uint32_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (uint8_t)(seed >> 16);
    }
}

/* ---------------- checkpoints ---------------- */

enum { PARAMS_SIZE = 1500, MODEL_SEQ = 7, MODEL_CRC = 0x1234 };

static int save(const uint8_t *data, uint32_t step, uint32_t *generation)
{
    int slot = tb_store_params_begin();
    if (slot == TB_NO_SLOT || tb_store_params_program(slot, 0, data, PARAMS_SIZE) != 0)
        return -1;
    return tb_store_params_seal(slot, MODEL_SEQ, MODEL_CRC, PARAMS_SIZE, tb_crc32(0, data, PARAMS_SIZE), step,
                                generation);
}

static void test_params(void)
{
    static uint8_t old_data[PARAMS_SIZE], new_data[PARAMS_SIZE];
    fill(old_data, PARAMS_SIZE, 1);
    fill(new_data, PARAMS_SIZE, 2);
    long cuts = 0, saw_new = 0;
    for (int history = 1; history <= 3; history++) { /* the old checkpoint in slot 0, then slot 1, ... */
        for (volatile long cut = 0;; cut++) {
            memset(flash, 0xFF, sizeof flash);
            budget = -1;
            uint32_t gen;
            for (int i = 0; i < history; i++)
                CHECK(save(old_data, 100 + (uint32_t)i, &gen) == 0, "setup save");
            budget = cut;
            volatile int completed = 0;
            if (setjmp(power_lost) == 0) {
                CHECK(save(new_data, 200, &gen) == 0, "save");
                completed = 1;
            }
            budget = -1;
            tb_stored_params p;
            int found = tb_store_params_find(MODEL_SEQ, MODEL_CRC, PARAMS_SIZE, &p);
            CHECK(found, "no checkpoint after a cut at %ld", cut);
            if (!found)
                continue;
            int is_old = memcmp(p.data, old_data, PARAMS_SIZE) == 0 && p.step == 100 + (uint32_t)history - 1;
            int is_new = memcmp(p.data, new_data, PARAMS_SIZE) == 0 && p.step == 200;
            CHECK(is_old || is_new, "cut %ld: neither the old nor the new checkpoint", cut);
            CHECK(!completed || is_new, "completed save not chosen");
            CHECK(tb_store_params_find(MODEL_SEQ + 1, MODEL_CRC, PARAMS_SIZE, &p) == 0, "wrong model matched");
            saw_new += is_new;
            cuts++;
            if (completed)
                break;
        }
    }
    CHECK(saw_new == 3, "the new checkpoint won %ld times, expected once per history", saw_new);
    printf("params: %ld power cuts\n", cuts);
}

/* ---------------- models ---------------- */

static int upload(const uint8_t *blob, uint32_t size, const tb_stored_model *current, int *slot)
{
    int overwrites;
    *slot = tb_store_model_target(size, current, &overwrites);
    if (*slot == TB_NO_SLOT || tb_store_model_erase(*slot, size) != 0
        || tb_store_model_program(*slot, 0, blob, size) != 0)
        return -1;
    return tb_store_model_seal(*slot, size, tb_crc32(0, blob, size));
}

static void test_models(void)
{
    enum { SMALL = 2000, BIG = 10000 };
    static uint8_t a[BIG], b[BIG];
    fill(a, BIG, 3);
    fill(b, BIG, 4);
    /* (old size, new size): beside the old one in the other slot, and over both slots */
    const uint32_t cases[][2] = {{SMALL, SMALL}, {SMALL, BIG}, {BIG, SMALL}, {BIG, BIG}};
    long cuts = 0;
    for (int k = 0; k < 4; k++) {
        uint32_t old_size = cases[k][0], new_size = cases[k][1];
        for (int history = 1; history <= 2; history++) {
            for (volatile long cut = 0;; cut++) {
                memset(flash, 0xFF, sizeof flash);
                budget = -1;
                tb_stored_model models[2];
                int slot;
                for (int i = 0; i < history; i++) {
                    int n = tb_store_models(models);
                    CHECK(upload(a, old_size, n ? &models[0] : NULL, &slot) == 0, "setup upload");
                }
                CHECK(tb_store_models(models) >= 1, "setup");
                tb_stored_model current = models[0];
                int overwrites;
                tb_store_model_target(new_size, &current, &overwrites);
                budget = cut;
                volatile int completed = 0;
                if (setjmp(power_lost) == 0) {
                    CHECK(upload(b, new_size, &current, &slot) == 0, "upload");
                    completed = 1;
                }
                budget = -1;
                int n = tb_store_models(models);
                int is_old = n && models[0].size == old_size && memcmp(models[0].blob, a, old_size) == 0;
                int is_new = n && models[0].size == new_size && memcmp(models[0].blob, b, new_size) == 0;
                if (completed)
                    CHECK(is_new, "case %d: committed model not chosen", k);
                else if (overwrites)
                    CHECK(n == 0 || is_old, "case %d cut %ld: a partial model survived", k, cut);
                else
                    CHECK(is_old, "case %d cut %ld: the old model was lost", k, cut);
                CHECK(!(old_size == BIG && new_size == BIG) || overwrites, "case %d: expected overwrite", k);
                CHECK(!(old_size == SMALL && new_size == SMALL) || !overwrites, "case %d: expected no overwrite", k);
                cuts++;
                if (completed)
                    break;
            }
        }
    }
    printf("models: %ld power cuts\n", cuts);
}

int main(void)
{
    test_params();
    test_models();
    printf("%s\n", failures ? "FAILED" : "OK");
    return failures ? 1 : 0;
}
