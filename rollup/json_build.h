/*
 * Building and writing JSON records with jansson while keeping track of a
 * failed allocation. json_object_set_new and json_array_append_new take
 * the value's reference and return -1 for a NULL value (its own allocation
 * failed) or when no memory is left. A record built past such a failure
 * would be stored with a member missing. json_dumps of jansson 2.14 can
 * return text with a key left out after an allocation failed inside it, so
 * records are written with json_dumps_whole.
 */
#ifndef HM_JSON_BUILD_H
#define HM_JSON_BUILD_H

#include <jansson.h>

/*
 * Sets member `key` of `json`, or appends to the array `json` when `key` is
 * NULL, and sets *failed when jansson could not. The reference to `value`
 * is taken either way.
 */
static inline void json_add(json_t *json, const char *key, json_t *value, int *failed)
{
    int rc = key != NULL ? json_object_set_new(json, key, value)
                         : json_array_append_new(json, value);
    if (rc != 0)
        *failed = 1;
}

/* Returns `json`, or NULL after dropping it when a json_add failed. */
static inline json_t *json_built(json_t *json, int failed)
{
    if (!failed)
        return json;
    json_decref(json);
    return NULL;
}

/*
 * Returns json_dumps(json, flags), or NULL when any allocation of jansson
 * failed on this thread while it ran. The caller frees the text.
 */
char *json_dumps_whole(const json_t *json, size_t flags);

/*
 * Notes a failed allocation of jansson on this thread. The allocator that
 * rollup/json_build.c installs calls it; a replacement allocator (a test's)
 * calls it too, so that json_dumps_whole reports the failure.
 */
void json_alloc_failure_note(void);

#endif
