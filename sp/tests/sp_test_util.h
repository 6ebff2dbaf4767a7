/*
 * What the SP transport's tests share: sleeping, a monotonic clock in milliseconds,
 * and big-endian reads and writes, written here rather than taken from sp_proto.h so
 * that the bytes the tests send and check do not depend on the code under test.
 */
#ifndef CORRAL_SP_TEST_UTIL_H
#define CORRAL_SP_TEST_UTIL_H

#include <stdint.h>
#include <time.h>

static inline void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The `bytes` low bytes of v at p, most significant first. */
static inline void put_be(uint8_t *p, uint64_t v, int bytes)
{
    while (bytes-- > 0) {
        p[bytes] = (uint8_t)v;
        v >>= 8;
    }
}

static inline uint64_t get_be(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = v << 8 | p[i];
    return v;
}

static inline void put_be64(uint8_t *p, uint64_t v) { put_be(p, v, 8); }
static inline void put_be32(uint8_t *p, uint32_t v) { put_be(p, v, 4); }
static inline uint64_t get_be64(const uint8_t *p) { return get_be(p, 8); }
static inline uint32_t get_be32(const uint8_t *p) { return (uint32_t)get_be(p, 4); }

#endif
