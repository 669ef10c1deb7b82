#include "pricing/discount.h"

#include <string.h>

#include "common/status.h"

/* A percent as the fraction it takes off: "10" is 1/10. */
static int percent_fraction(__int128 percent_pico, struct money_ratio *out)
{
    return money_ratio_make(percent_pico, 100 * MONEY_DECIMAL_SCALE, out);
}

/* Finds the highest tier whose threshold the driver strictly exceeds; -1 when there is none. */
static int highest_tier_exceeded(const struct pricebook_discount *discount,
                                 struct money_ratio driver, int *index_out)
{
    *index_out = -1;
    for (size_t i = 0; i < discount->tier_count; i++) {
        struct money_ratio above;
        int comparison;
        int status = money_ratio_from_decimal(discount->tiers[i].above_pico, &above);
        if (status == HM_OK)
            status = money_ratio_compare(driver, above, &comparison);
        if (status != HM_OK)
            return status;
        if (comparison > 0)
            *index_out = (int)i;
    }
    return HM_OK;
}

/*
 * Computes the graduated fraction: sum over tiers of percent_t * (driver
 * inside tier t) / driver. Tier t spans (above_t, above_t+1] and the last is
 * unbounded. Called only when the driver exceeds the first tier.
 */
static int graduated_fraction(const struct pricebook_discount *discount, struct money_ratio driver,
                              int highest, struct money_ratio *out)
{
    struct money_ratio weighted = {0, 1};

    for (int i = 0; i <= highest; i++) {
        struct money_ratio lower;
        struct money_ratio upper = driver;
        struct money_ratio inside;
        struct money_ratio percent;
        struct money_ratio term;
        int status = money_ratio_from_decimal(discount->tiers[i].above_pico, &lower);

        /* The tier ends at the next threshold unless the driver stops inside it. */
        if (status == HM_OK && i < highest)
            status = money_ratio_from_decimal(discount->tiers[i + 1].above_pico, &upper);
        if (status == HM_OK)
            status = money_ratio_sub(upper, lower, &inside);
        if (status == HM_OK)
            status = percent_fraction(discount->tiers[i].percent_pico, &percent);
        if (status == HM_OK)
            status = money_ratio_mul(percent, inside, &term);
        if (status == HM_OK)
            status = money_ratio_add(weighted, term, &weighted);
        if (status != HM_OK)
            return status;
    }
    return money_ratio_div(weighted, driver, out);
}

int pricing_discount_compute(const struct pricebook_discount *discount, struct money_ratio driver,
                             struct money_amount base, enum money_rounding rounding,
                             struct pricing_discount *out)
{
    memset(out, 0, sizeof(*out));
    out->percent = (struct money_ratio){0, 1};
    if (driver.num < 0 || base.minor < 0)
        return HM_ERR_INVALID;
    if (discount->tier_count == 0 || driver.num == 0)
        return HM_OK;

    int highest;
    int status = highest_tier_exceeded(discount, driver, &highest);
    if (status != HM_OK || highest < 0)
        return status;

    struct money_ratio fraction;
    if (discount->mode == PRICEBOOK_DISCOUNT_VOLUME)
        status = percent_fraction(discount->tiers[highest].percent_pico, &fraction);
    else
        status = graduated_fraction(discount, driver, highest, &fraction);

    /* One exact product, rounded once. */
    struct money_ratio amount;
    if (status == HM_OK)
        status = money_ratio_mul((struct money_ratio){base.minor, 1}, fraction, &amount);
    if (status == HM_OK)
        status = money_amount_from_ratio(amount, rounding, &out->amount);
    if (status == HM_OK)
        status = money_ratio_mul(fraction, (struct money_ratio){100, 1}, &out->percent);
    if (status != HM_OK)
        return status;

    out->applies = true;
    out->tier_index = (size_t)highest;
    return HM_OK;
}
