#include "pricing/discount.h"

#include <string.h>

#include "common/status.h"

#define INT128_MAX_VALUE ((__int128)(((unsigned __int128)1 << 127) - 1))
#define SECONDS_PER_HOUR 3600

/* A tier threshold in GPU-hours as an exact rational. */
static int tier_hours(const struct pricebook_tier *tier, struct money_ratio *out)
{
    return money_ratio_from_decimal(tier->above_hours_pico, out);
}

/* A percent as the fraction it takes off: "10" is 1/10. */
static int percent_fraction(__int128 percent_pico, struct money_ratio *out)
{
    return money_ratio_make(percent_pico, 100 * MONEY_DECIMAL_SCALE, out);
}

/* Finds the highest tier whose threshold the hours strictly exceed; -1 when there is none. */
static int highest_tier_exceeded(const struct pricebook *book, struct money_ratio hours,
                                 int *index_out)
{
    *index_out = -1;
    for (size_t i = 0; i < book->tier_count; i++) {
        struct money_ratio above;
        int comparison;
        int status = tier_hours(&book->tiers[i], &above);
        if (status == HM_OK)
            status = money_ratio_compare(hours, above, &comparison);
        if (status != HM_OK)
            return status;
        if (comparison > 0)
            *index_out = (int)i;
    }
    return HM_OK;
}

/*
 * Computes the graduated fraction: sum over tiers of percent_t * (hours
 * inside tier t) / hours. Tier t spans (above_t, above_t+1], the last one is
 * unbounded. Called only when hours exceed the first tier.
 */
static int graduated_fraction(const struct pricebook *book, struct money_ratio hours, int highest,
                              struct money_ratio *out)
{
    struct money_ratio weighted = {0, 1};

    for (int i = 0; i <= highest; i++) {
        struct money_ratio lower;
        struct money_ratio upper = hours;
        struct money_ratio inside;
        struct money_ratio percent;
        struct money_ratio term;
        int status = tier_hours(&book->tiers[i], &lower);

        /* The tier ends at the next threshold unless the hours stop inside it. */
        if (status == HM_OK && i < highest)
            status = tier_hours(&book->tiers[i + 1], &upper);
        if (status == HM_OK)
            status = money_ratio_add(upper, (struct money_ratio){-lower.num, lower.den}, &inside);
        if (status == HM_OK)
            status = percent_fraction(book->tiers[i].percent_pico, &percent);
        if (status == HM_OK)
            status = money_ratio_mul(percent, inside, &term);
        if (status == HM_OK)
            status = money_ratio_add(weighted, term, &weighted);
        if (status != HM_OK)
            return status;
    }

    struct money_ratio per_hour;
    int status = money_ratio_make(hours.den, hours.num, &per_hour);
    if (status == HM_OK)
        status = money_ratio_mul(weighted, per_hour, out);
    return status;
}

int pricing_discount_compute(const struct pricebook *book, unsigned __int128 gpu_seconds,
                             struct money_amount gpu_subtotal, struct pricing_discount *out)
{
    memset(out, 0, sizeof(*out));
    out->percent = (struct money_ratio){0, 1};
    if (book->discount_mode == PRICEBOOK_DISCOUNT_NONE || book->tier_count == 0 || gpu_seconds == 0)
        return HM_OK;
    if (gpu_seconds > (unsigned __int128)INT128_MAX_VALUE)
        return HM_ERR_OVERFLOW;

    struct money_ratio hours;
    int highest;
    int status = money_ratio_make((__int128)gpu_seconds, SECONDS_PER_HOUR, &hours);
    if (status == HM_OK)
        status = highest_tier_exceeded(book, hours, &highest);
    if (status != HM_OK || highest < 0)
        return status;

    struct money_ratio fraction;
    if (book->discount_mode == PRICEBOOK_DISCOUNT_VOLUME)
        status = percent_fraction(book->tiers[highest].percent_pico, &fraction);
    else
        status = graduated_fraction(book, hours, highest, &fraction);

    /* One exact product, rounded once. */
    struct money_ratio amount;
    if (status == HM_OK)
        status = money_ratio_mul((struct money_ratio){gpu_subtotal.minor, 1}, fraction, &amount);
    if (status == HM_OK)
        status = money_amount_from_ratio(amount, book->rounding, &out->amount);
    if (status == HM_OK)
        status = money_ratio_mul(fraction, (struct money_ratio){100, 1}, &out->percent);
    if (status != HM_OK)
        return status;

    out->applies = true;
    out->tier_index = (size_t)highest;
    return HM_OK;
}
