#include "status.h"

const char *hm_status_str(int status)
{
    switch (status) {
    case HM_OK: return "ok";
    case HM_ERR_INVALID: return "invalid input";
    case HM_ERR_NOMEM: return "out of memory";
    case HM_ERR_IO: return "i/o error";
    case HM_ERR_NOT_FOUND: return "not found";
    case HM_ERR_EXISTS: return "already exists";
    case HM_ERR_OVERFLOW: return "overflow";
    case HM_ERR_STORAGE: return "ledger storage error";
    case HM_ERR_FULL: return "ledger or disk full";
    case HM_ERR_CONFLICT: return "conflict";
    case HM_ERR_STATE: return "not allowed in this state";
    }
    return "unknown status";
}
