/* Power-loss tests of device/store.c: checkpoint saves and model uploads are cut short at every
 * point (flash programs in 8-byte units, as the F7 does with 64-bit parallelism; erases in 128-byte
 * steps); after each cut, what a boot would pick must be the old content or the new one, complete
 * and CRC-valid, never anything else, and the checkpoint layout must be the one of the model picked.
 * Both layouts are covered, and the switch between them: a model larger than slots A and B
 * together committed over a smaller one with checkpoints, and back.
 *
 * The flash is the F746's storage sectors 3-7 (32, 128, 256, 256, 256 KB) scaled down 128 times:
 * store.c only sees tb_port_board(). */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "port.h"
#include "store.h"

#define ERASE_STEP 128u
#define PROGRAM_UNIT 8u
enum { SECTORS = 5 };
static const uint32_t sector_start[SECTORS + 1] = {0, 256, 1280, 3328, 5376, 7424};
#define FLASH_BYTES 7424u

static uint8_t flash[FLASH_BYTES];
static long budget = -1; /* flash operations left before the power fails; -1: no failure */
static jmp_buf power_lost;

static const tb_board board = {
    .name = "test",
    .window = 1,
    .sector_count = SECTORS,
    .sector_start = sector_start,
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

static int erase_calls;

int tb_port_flash_erase(uint32_t offset, uint32_t len)
{
    erase_calls++;
    for (int s = 0; s < SECTORS; s++)
        if (sector_start[s + 1] > offset && sector_start[s] < offset + len)
            for (uint32_t i = sector_start[s]; i < sector_start[s + 1]; i += ERASE_STEP) {
                spend();
                memset(flash + i, 0xFF, ERASE_STEP);
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

/* Model sizes: one sector (double-buffered in A or B), slots A and B together, from the shared
 * sector on. Checkpoint capacities: sectors 3-4 and 5 (normal), sectors 3 and 4 (beside LARGE). */
enum { SMALL = 1500, MEDIUM = 3000, LARGE = 5000, MAX_BLOB = LARGE };
enum { NORMAL_CAPACITY = 1280 - 32, SMALL_CAPACITY = 256 - 32, PARAMS_SMALL = 200, PARAMS_BIG = 1000 };

static uint8_t blobs[2][MAX_BLOB]; /* [0]: the old model's bytes, [1]: the new one's */

static void clear_flash(void)
{
    budget = -1;
    memset(flash, 0xFF, sizeof flash);
}

/* the newest committed model (a boot's choice), or 0 */
static int newest(tb_stored_model *out)
{
    tb_stored_model models[TB_MODEL_SLOTS];
    int n = tb_store_models(models);
    if (n)
        *out = models[0];
    return n > 0;
}

static int is_model(const tb_stored_model *m, const uint8_t *blob, uint32_t size)
{
    return m->size == size && memcmp(m->blob, blob, size) == 0;
}

/* as the device does it, over the newest model */
static int upload(const uint8_t *blob, uint32_t size)
{
    tb_stored_model current;
    int have = newest(&current), overwrites;
    int slot = tb_store_model_target(size, have ? &current : NULL, &overwrites);
    if (slot == TB_NO_SLOT || tb_store_model_erase(slot, size) != 0
        || tb_store_model_program(slot, 0, blob, size) != 0)
        return -1;
    return tb_store_model_seal(slot, size, tb_crc32(0, blob, size));
}

/* as the device does it */
static int save(const tb_stored_model *m, const uint8_t *data, uint32_t size, uint32_t step)
{
    uint32_t generation;
    if (size > tb_store_params_capacity())
        return -1;
    int slot = tb_store_params_begin();
    if (slot == TB_NO_SLOT || tb_store_params_program(slot, 0, data, size) != 0)
        return -1;
    return tb_store_params_seal(slot, m->seq, m->crc, size, tb_crc32(0, data, size), step, &generation);
}

/* the checkpoint layout must be the one of the model a boot picks (none: the normal one) */
static void check_layout(const char *what, long cut)
{
    tb_stored_model m;
    int large = newest(&m) && m.slot == TB_MODEL_L;
    CHECK(tb_store_params_capacity() == (large ? SMALL_CAPACITY : NORMAL_CAPACITY),
          "%s, cut %ld: checkpoint capacity %u beside a %s model", what, cut, (unsigned)tb_store_params_capacity(),
          large ? "large" : "small or no");
}

/* ---------------- checkpoints ---------------- */

/* A save cut at every point, with the model `size` committed after `before` (0: nothing) and two
 * checkpoints of that one, and 1-3 checkpoints already saved for it. */
static void test_params(uint32_t before, uint32_t size)
{
    static uint8_t old_data[PARAMS_BIG], new_data[PARAMS_BIG];
    uint32_t params = size == LARGE ? PARAMS_SMALL : PARAMS_BIG;
    fill(old_data, params, 1);
    fill(new_data, params, 2);
    long cuts = 0, saw_new = 0;
    for (int history = 1; history <= 3; history++) { /* the old checkpoint in slot 0, then slot 1, ... */
        for (volatile long cut = 0;; cut++) {
            clear_flash();
            tb_stored_model m;
            if (before) {
                CHECK(upload(blobs[0], before) == 0 && newest(&m), "setup upload");
                for (int i = 0; i < 2; i++)
                    CHECK(save(&m, old_data, PARAMS_SMALL, 50 + (uint32_t)i) == 0, "setup save");
            }
            CHECK(upload(blobs[1], size) == 0 && newest(&m) && is_model(&m, blobs[1], size), "setup upload");
            for (int i = 0; i < history; i++)
                CHECK(save(&m, old_data, params, 100 + (uint32_t)i) == 0, "setup save");
            budget = cut;
            volatile int completed = 0;
            if (setjmp(power_lost) == 0) {
                CHECK(save(&m, new_data, params, 200) == 0, "save");
                completed = 1;
            }
            budget = -1;
            check_layout("params", cut);
            tb_stored_params p;
            int found = tb_store_params_find(m.seq, m.crc, params, &p);
            CHECK(found, "no checkpoint after a cut at %ld", cut);
            int is_old = found && memcmp(p.data, old_data, params) == 0 && p.step == 100 + (uint32_t)history - 1;
            int is_new = found && memcmp(p.data, new_data, params) == 0 && p.step == 200;
            CHECK(is_old || is_new, "cut %ld: neither the old nor the new checkpoint", cut);
            CHECK(!completed || is_new, "completed save not chosen");
            CHECK(tb_store_params_find(m.seq + 1, m.crc, params, &p) == 0, "wrong model matched");
            saw_new += is_new;
            cuts++;
            if (completed)
                break;
        }
    }
    CHECK(saw_new == 3, "the new checkpoint won %ld times, expected once per history", saw_new);
    printf("params (model of %u bytes after one of %u): %ld power cuts\n", (unsigned)size, (unsigned)before, cuts);
}

/* ---------------- models ---------------- */

/* An upload of new_size bytes cut at every point, over the model old_size committed 1-3 times
 * with two checkpoints: the old model with its newest checkpoint, or (when
 * the new one overwrites it) no model, until the commit makes the new one the model. */
static void test_models(void)
{
    static uint8_t old_params[PARAMS_SMALL], older_params[PARAMS_SMALL];
    fill(older_params, PARAMS_SMALL, 5);
    fill(old_params, PARAMS_SMALL, 6);
    const uint32_t sizes[3] = {SMALL, MEDIUM, LARGE};
    long cuts = 0;
    for (int k = 0; k < 9; k++) {
        uint32_t old_size = sizes[k / 3], new_size = sizes[k % 3];
        for (int history = 1; history <= 3; history++) { /* SMALL: old in A; in B; in A with an older one in B */
            for (volatile long cut = 0;; cut++) {
                clear_flash();
                for (int i = 0; i < history; i++)
                    CHECK(upload(blobs[0], old_size) == 0, "setup upload");
                tb_stored_model old;
                CHECK(newest(&old) && is_model(&old, blobs[0], old_size), "setup");
                CHECK(save(&old, older_params, PARAMS_SMALL, 1) == 0 && save(&old, old_params, PARAMS_SMALL, 2) == 0,
                      "setup save");
                int overwrites;
                tb_store_model_target(new_size, &old, &overwrites);
                budget = cut;
                volatile int completed = 0;
                if (setjmp(power_lost) == 0) {
                    CHECK(upload(blobs[1], new_size) == 0, "upload");
                    completed = 1;
                }
                budget = -1;
                tb_stored_model m;
                int n = newest(&m);
                int is_old = n && is_model(&m, blobs[0], old_size) && m.seq == old.seq;
                int is_new = n && is_model(&m, blobs[1], new_size);
                if (completed)
                    CHECK(is_new, "case %d: committed model not chosen", k);
                else if (overwrites)
                    CHECK(n == 0 || is_old, "case %d cut %ld: a partial model survived", k, cut);
                else
                    CHECK(is_old, "case %d cut %ld: the old model was lost", k, cut);
                CHECK(overwrites == !(old_size == SMALL && new_size == SMALL), "case %d: overwrite expected %d",
                      k, !overwrites);
                tb_stored_params p;
                if (is_old) /* its newest checkpoint stays */
                    CHECK(tb_store_params_find(old.seq, old.crc, PARAMS_SMALL, &p) && p.step == 2
                              && memcmp(p.data, old_params, PARAMS_SMALL) == 0,
                          "case %d cut %ld: the old model lost its newest checkpoint", k, cut);
                if (is_new)
                    CHECK(!tb_store_params_find(m.seq, m.crc, PARAMS_SMALL, &p),
                          "case %d: a checkpoint matched the new commit", k);
                check_layout("models", cut);
                cuts++;
                if (completed)
                    break;
            }
        }
    }
    printf("models: %ld power cuts\n", cuts);
}

/* A checkpoint record that the current layout does not show still counts for the next commit's
 * sequence number: the large model's record in sector 4 (hidden in the normal layout, where sector 4
 * is part of slot 0) must not apply to the same blob committed again. */
static void test_hidden_checkpoint_does_not_match_a_new_commit(void)
{
    static uint8_t data[PARAMS_SMALL];
    fill(data, PARAMS_SMALL, 7);
    clear_flash();
    tb_stored_model large, small, again;
    CHECK(upload(blobs[1], LARGE) == 0 && newest(&large) && large.slot == TB_MODEL_L, "large upload");
    CHECK(save(&large, data, PARAMS_SMALL, 1) == 0 && save(&large, data, PARAMS_SMALL, 2) == 0, "large saves");
    CHECK(upload(blobs[0], SMALL) == 0 && newest(&small) && small.slot != TB_MODEL_L, "small upload");
    CHECK(save(&small, data, PARAMS_SMALL, 3) == 0, "small save");
    /* a power cut after the first of the two sectors of a second save's slot 0 was erased */
    CHECK(tb_port_flash_erase(sector_start[0], sector_start[1]) == 0, "erase");
    tb_stored_params p;
    CHECK(upload(blobs[1], LARGE) == 0 && newest(&again) && again.crc == large.crc, "large upload again");
    CHECK(tb_store_params_find(large.seq, large.crc, PARAMS_SMALL, &p) && p.step == 2, "the hidden record is back");
    CHECK(again.seq > large.seq && !tb_store_params_find(again.seq, again.crc, PARAMS_SMALL, &p),
          "the old checkpoint (seq %u) applies to the new commit (seq %u)", (unsigned)large.seq, (unsigned)again.seq);
}

/* A valid-looking record inside a larger valid one (here: a blob that carries a model record at
 * the offset of slot A's header) is the larger one's data, not a model. */
static void test_record_inside_a_record_is_stale(void)
{
    static uint8_t blob[LARGE];
    memcpy(blob, blobs[1], LARGE);
    uint32_t at = sector_start[3] - sector_start[2] - TB_MODEL_HEADER_BYTES, inner = 100;
    uint8_t *h = blob + at;
    const uint32_t fields[4] = {0x314D4254u /* "TBM1" */, 1000, inner, tb_crc32(0, h + TB_MODEL_HEADER_BYTES, inner)};
    for (int i = 0; i < 16; i++)
        h[i] = (uint8_t)(fields[i / 4] >> (8 * (i % 4)));
    uint32_t header_crc = tb_crc32(0, h, 16);
    for (int i = 0; i < 4; i++)
        h[16 + i] = (uint8_t)(header_crc >> (8 * i));
    clear_flash();
    CHECK(upload(blob, LARGE) == 0, "upload");
    tb_stored_model models[TB_MODEL_SLOTS];
    int n = tb_store_models(models);
    CHECK(n == 1 && models[0].slot == TB_MODEL_L && models[0].size == LARGE, "%d models, the newest in slot %d", n,
          models[0].slot);
}

/* Where each size goes, what it overwrites, and which sectors it erases. */
static void test_targets(void)
{
    CHECK(tb_store_model_capacity() == FLASH_BYTES - sector_start[2] - TB_MODEL_HEADER_BYTES, "capacity");
    CHECK(tb_store_unshared_model_capacity() == FLASH_BYTES - sector_start[3] - TB_MODEL_HEADER_BYTES, "unshared");
    int o;
    CHECK(tb_store_model_target(tb_store_model_capacity() + 1, NULL, &o) == TB_NO_SLOT, "too large");
    const struct {
        uint32_t current, size;
        int slot, overwrites, erases;
    } cases[] = {
        {0, SMALL, TB_MODEL_A, 0, 1},      {SMALL, SMALL, TB_MODEL_B, 0, 1},  {0, MEDIUM, TB_MODEL_A, 0, 2},
        {SMALL, MEDIUM, TB_MODEL_A, 1, 2}, {MEDIUM, SMALL, TB_MODEL_A, 1, 1}, {0, LARGE, TB_MODEL_L, 0, 3},
        {SMALL, LARGE, TB_MODEL_L, 1, 3},  {LARGE, SMALL, TB_MODEL_A, 1, 2},  {LARGE, LARGE, TB_MODEL_L, 1, 3},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        clear_flash();
        tb_stored_model current;
        if (cases[i].current)
            CHECK(upload(blobs[0], cases[i].current) == 0 && newest(&current), "setup");
        int slot = tb_store_model_target(cases[i].size, cases[i].current ? &current : NULL, &o);
        CHECK(slot == cases[i].slot && o == cases[i].overwrites, "case %u: slot %d overwrites %d", i, slot, o);
        erase_calls = 0;
        tb_store_model_erase(slot, cases[i].size);
        CHECK(erase_calls == cases[i].erases, "case %u: %d sector erases", i, erase_calls);
    }
}

int main(void)
{
    fill(blobs[0], MAX_BLOB, 3);
    fill(blobs[1], MAX_BLOB, 4);
    test_targets();
    test_params(0, SMALL);
    test_params(0, MEDIUM);
    test_params(0, LARGE);
    test_params(SMALL, LARGE); /* into the small slots, after checkpoints in the normal ones */
    test_params(LARGE, SMALL); /* and back */
    test_models();
    test_hidden_checkpoint_does_not_match_a_new_commit();
    test_record_inside_a_record_is_stale();
    printf("%s\n", failures ? "FAILED" : "OK");
    return failures ? 1 : 0;
}
