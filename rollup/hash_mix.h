/* The multiply step of the seeded hashes of the rollup code (the id index, rollup keys). */
#ifndef HM_ROLLUP_HASH_MIX_H
#define HM_ROLLUP_HASH_MIX_H

#include <stdint.h>

/* Returns a 64x64 -> 128 bit product folded to 64 bits, as in the wyhash family of hashes. */
static inline uint64_t hash_mix(uint64_t a, uint64_t b)
{
    unsigned __int128 product = (unsigned __int128)a * b;
    return (uint64_t)product ^ (uint64_t)(product >> 64);
}

#endif
