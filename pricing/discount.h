/*
 * The GPU volume discount of a price book, as a pure function of the month's
 * GPU-seconds and the GPU subtotal (the sum of the rounded GPU lines).
 *
 * Tiers are half-open intervals over exact quantities: a tier "above 1000
 * hours" starts strictly above 3,600,000 GPU-seconds, compared without
 * rounding, so 1000 h + 1 s is inside it and 1000 h exactly is not.
 */
#ifndef HM_PRICING_DISCOUNT_H
#define HM_PRICING_DISCOUNT_H

#include <stdbool.h>

#include "pricing/money.h"
#include "pricing/pricebook.h"

struct pricing_discount {
    bool applies;               /* false: no tier exceeded, or the book has no discount */
    struct money_amount amount; /* >= 0 and <= the GPU subtotal, rounded once */
    struct money_ratio percent; /* volume: the tier's percent; graduated: the effective percent */
    size_t tier_index;          /* volume: the tier applied; graduated: the highest tier reached */
};

/*
 * Computes the GPU volume discount under the book's mode and rounding:
 * - volume: amount = subtotal * percent of the highest tier whose threshold
 *   the GPU-hours strictly exceed;
 * - graduated: amount = subtotal * sum over tiers of percent * (hours inside
 *   the tier) / (all hours), one exact rational rounded once.
 * Returns 0 (out->applies is false when nothing applies) or HM_ERR_OVERFLOW.
 */
int pricing_discount_compute(const struct pricebook *book, unsigned __int128 gpu_seconds,
                             struct money_amount gpu_subtotal, struct pricing_discount *out);

#endif
