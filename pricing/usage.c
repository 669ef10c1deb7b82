#include "pricing/usage.h"

#include <string.h>

#include "common/status.h"

static const char *const support_tier_names[] = {
    [SUPPORT_NONE] = "none",
    [SUPPORT_BASIC] = "basic",
    [SUPPORT_PRO] = "pro",
    [SUPPORT_ENTERPRISE] = "enterprise",
};

const char *support_tier_name(enum support_tier tier)
{
    if ((unsigned)tier >= sizeof support_tier_names / sizeof support_tier_names[0])
        return "unknown";
    return support_tier_names[tier];
}

int support_tier_parse(const char *name, enum support_tier *out)
{
    for (size_t i = 0; i < sizeof support_tier_names / sizeof support_tier_names[0]; i++) {
        if (strcmp(name, support_tier_names[i]) == 0) {
            *out = (enum support_tier)i;
            return HM_OK;
        }
    }
    return HM_ERR_INVALID;
}
