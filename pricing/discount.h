/*
 * Percentage discounts of a price book version, as a pure function of the
 * driver meter's quantity over the whole period and the discount's base (the
 * sum of the rounded usage lines of the kinds it applies to).
 *
 * Tiers are half-open intervals over exact quantities: a tier "above 1000"
 * GPU-hours starts strictly above 3,600,000 GPU-seconds, compared without
 * rounding, so 1000 h + 1 s is inside it and 1000 h exactly is not.
 */
#ifndef HM_PRICING_DISCOUNT_H
#define HM_PRICING_DISCOUNT_H

#include <stdbool.h>

#include "pricing/money.h"
#include "pricing/pricebook.h"

struct pricing_discount {
    bool applies;               /* false: the driver exceeds no tier, or it is 0 */
    struct money_amount amount; /* >= 0 and <= the base, rounded once */
    struct money_ratio percent; /* volume: the tier's percent; graduated: the effective percent */
    size_t tier_index;          /* volume: the tier applied; graduated: the highest tier reached */
};

/*
 * Computes one discount under the given rounding, with driver in billing
 * units of the driver meter (>= 0) and base in minor units (>= 0):
 * - volume: amount = base * percent of the highest tier whose `above` the
 *   driver strictly exceeds;
 * - graduated: amount = base * (sum over tiers of percent * the driver's
 *   quantity inside the tier) / driver, one exact rational rounded once.
 *   Tier t spans (above(t), above(t+1)] and the last tier is unbounded.
 * Returns 0 (out->applies is false when nothing applies), HM_ERR_INVALID for
 * a negative driver or base, or HM_ERR_OVERFLOW.
 */
int pricing_discount_compute(const struct pricebook_discount *discount, struct money_ratio driver,
                             struct money_amount base, enum money_rounding rounding,
                             struct pricing_discount *out);

#endif
