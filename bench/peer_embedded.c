/*
 * The embedded peers, run in this process by one writer thread with group
 * commit: every frame that has arrived, up to meterd's measured events per
 * commit, goes into one transaction, and each frame counts as acknowledged
 * when that transaction's commit returns.
 *
 * - LMDB, the raw ceiling: each record's bytes under (tenant, event id) with
 *   MDB_NOOVERWRITE, a synced commit, and nothing else (no decoding, no
 *   rollups, no verification).
 * - SQLite: the platform's usage_events table in WAL mode with
 *   synchronous=FULL, so that a committed transaction survives power loss, as
 *   an acknowledged frame of meterd does. NORMAL would skip the fsync of the
 *   WAL at each commit and could lose the last transactions.
 */
#include "bench.h"

#include "common/status.h"
#include "rollup/ledger.h"

#include <lmdb.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LMDB_MAP_SIZE ((size_t)16 << 30)

static void fail(struct peer_result *result, const char *why)
{
    result->failed = 1;
    snprintf(result->note, sizeof result->note, "%s", why);
}

/*
 * Runs the closed loop and the open-loop phases of an embedded peer. `ops`
 * opens a fresh store for each phase (named by its worker index, which is
 * the phase number here), and `check` reads back the closed loop's store.
 */
static int run_embedded(struct bench *bench, struct peer_result *result, struct batch_ops *ops,
                        uint32_t *phase_number,
                        void (*check)(struct bench *bench, struct peer_result *result))
{
    result->ran = 1;
    uint32_t group = bench->group_events ? bench->group_events : BENCH_GROUP_EVENTS_DEFAULT;
    result->events_per_commit = group;
    proc_reset_hwm();
    long rss_before = proc_status_kib(getpid(), "VmRSS");
    struct phase phase;
    bench_closed_phase(bench, result->name, &phase);
    int rc = drive_batches(&bench->pool, &phase, ops, 1, group);
    result->cpu_s = phase.thread_cpu_s;
    double max_eps = bench_record_closed(result, &phase);
    phase_free(&phase);
    if (rc != HM_OK) {
        fail(result, "the closed loop failed");
        return rc;
    }
    check(bench, result);
    for (size_t i = 0; i < bench->load_count && !bench_interrupted; i++) {
        (*phase_number)++;
        if (bench_open_phase(bench, result->name, bench->loads[i], max_eps, &phase) != HM_OK)
            return HM_ERR_NOMEM;
        drive_batches(&bench->pool, &phase, ops, 1, group);
        bench_record_open(result, &phase);
        phase_free(&phase);
    }
    result->rss_kib = proc_status_kib(getpid(), "VmHWM") - rss_before;
    return HM_OK;
}

/* ---- LMDB ---- */

struct lmdb_peer {
    struct bench *bench;
    uint32_t phase;
    char dir[BENCH_PATH_MAX + 32];
};

struct lmdb_state {
    struct lmdb_peer *peer;
    MDB_env *env;
    MDB_dbi dbi;
};

static int lmdb_open(void *context, uint32_t worker, void **state_out)
{
    struct lmdb_peer *peer = context;
    (void)worker;
    struct lmdb_state *state = calloc(1, sizeof *state);
    if (state == NULL)
        return HM_ERR_NOMEM;
    state->peer = peer;
    snprintf(peer->dir, sizeof peer->dir, "%s/lmdb-%u", peer->bench->temp_dir, peer->phase);
    mkdir(peer->dir, 0700);
    MDB_txn *txn = NULL;
    int rc = mdb_env_create(&state->env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(state->env, LMDB_MAP_SIZE);
    if (rc == 0)
        rc = mdb_env_open(state->env, peer->dir, 0, 0600);
    if (rc == 0)
        rc = mdb_txn_begin(state->env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, NULL, 0, &state->dbi);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else if (txn != NULL)
        mdb_txn_abort(txn);
    if (rc != 0) {
        fprintf(stderr, "meterbench: lmdb: cannot open %s: %s\n", peer->dir, mdb_strerror(rc));
        if (state->env != NULL)
            mdb_env_close(state->env);
        free(state);
        return HM_ERR_STORAGE;
    }
    *state_out = state;
    return HM_OK;
}

static int lmdb_store(void *context, size_t first, size_t count)
{
    struct lmdb_state *state = context;
    struct pool *pool = &state->peer->bench->pool;
    MDB_txn *txn = NULL;
    int rc = mdb_txn_begin(state->env, NULL, 0, &txn);
    for (size_t f = first; rc == 0 && f < first + count; f++) {
        const struct pool_frame *frame = &pool->frames[f];
        const uint8_t *bytes = pool->frame_bytes + frame->offset;
        const uint8_t *record = bytes + FRAME_HEADER_SIZE;
        for (uint16_t i = 0; rc == 0 && i < frame->event_count; i++) {
            uint8_t key_bytes[2 * UUID_SIZE];
            size_t size = (size_t)(record[2] | record[3] << 8);
            memcpy(key_bytes, bytes + 28, UUID_SIZE); /* the tenant id of the frame header */
            memcpy(key_bytes + UUID_SIZE, record + 4, UUID_SIZE);
            MDB_val key = { sizeof key_bytes, key_bytes };
            MDB_val value = { size, (void *)record };
            rc = mdb_put(txn, state->dbi, &key, &value, MDB_NOOVERWRITE);
            record += size;
        }
    }
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else if (txn != NULL)
        mdb_txn_abort(txn);
    if (rc != 0)
        fprintf(stderr, "meterbench: lmdb: append failed: %s\n", mdb_strerror(rc));
    return rc == 0 ? HM_OK : HM_ERR_STORAGE;
}

static size_t lmdb_closed_entries;

static void lmdb_close(void *context)
{
    struct lmdb_state *state = context;
    MDB_txn *txn = NULL;
    MDB_stat stat;
    if (mdb_txn_begin(state->env, NULL, MDB_RDONLY, &txn) == 0) {
        if (mdb_stat(txn, state->dbi, &stat) == 0 && state->peer->phase == 0)
            lmdb_closed_entries = stat.ms_entries;
        mdb_txn_abort(txn);
    }
    mdb_env_close(state->env);
    free(state);
}

static void lmdb_check(struct bench *bench, struct peer_result *result)
{
    result->stored = lmdb_closed_entries;
    result->count_ok = lmdb_closed_entries == pool_events_in(&bench->pool, bench->closed_frames);
    snprintf(result->note, sizeof result->note, "raw appends: no rollups to compare");
}

int peer_lmdb(struct bench *bench, struct peer_result *result)
{
    result->name = "lmdb-raw";
    result->durability = "durable: synced commit per group, record bytes only";
    struct lmdb_peer peer = { .bench = bench };
    struct batch_ops ops = { .peer = &peer, .open = lmdb_open, .store = lmdb_store,
                             .close = lmdb_close };
    return run_embedded(bench, result, &ops, &peer.phase, lmdb_check);
}

/* ---- SQLite ---- */

struct sqlite_peer {
    struct bench *bench;
    uint32_t phase;
    char path[BENCH_PATH_MAX + 32];
};

struct sqlite_state {
    struct sqlite_peer *peer;
    sqlite3 *db;
    sqlite3_stmt *insert;
};

static const char sqlite_schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS usage_events ("
    " id BLOB NOT NULL, tenant_id BLOB NOT NULL, timestamp INTEGER NOT NULL,"
    " event_type TEXT NOT NULL, metadata TEXT, cost_usd TEXT,"
    " PRIMARY KEY (id, timestamp));";

static int sqlite_exec(sqlite3 *db, const char *sql)
{
    char *error = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &error) == SQLITE_OK)
        return HM_OK;
    fprintf(stderr, "meterbench: sqlite: %s failed: %s\n", sql, error ? error : "unknown error");
    sqlite3_free(error);
    return HM_ERR_STORAGE;
}

static int sqlite_open_state(void *context, uint32_t worker, void **state_out)
{
    struct sqlite_peer *peer = context;
    (void)worker;
    struct sqlite_state *state = calloc(1, sizeof *state);
    if (state == NULL)
        return HM_ERR_NOMEM;
    state->peer = peer;
    snprintf(peer->path, sizeof peer->path, "%s/sqlite-%u.db", peer->bench->temp_dir,
             peer->phase);
    int rc = sqlite3_open(peer->path, &state->db) == SQLITE_OK ? HM_OK : HM_ERR_STORAGE;
    if (rc == HM_OK)
        rc = sqlite_exec(state->db, sqlite_schema);
    if (rc == HM_OK &&
        sqlite3_prepare_v2(state->db, "INSERT INTO usage_events (id, tenant_id, timestamp, "
                           "event_type, metadata) VALUES (?, ?, ?, ?, ?)", -1, &state->insert,
                           NULL) != SQLITE_OK)
        rc = HM_ERR_STORAGE;
    if (rc != HM_OK) {
        fprintf(stderr, "meterbench: sqlite: cannot open %s: %s\n", peer->path,
                state->db ? sqlite3_errmsg(state->db) : "out of memory");
        sqlite3_finalize(state->insert);
        sqlite3_close(state->db);
        free(state);
        return rc;
    }
    *state_out = state;
    return HM_OK;
}

static int sqlite_store(void *context, size_t first, size_t count)
{
    struct sqlite_state *state = context;
    struct pool *pool = &state->peer->bench->pool;
    if (sqlite_exec(state->db, "BEGIN") != HM_OK)
        return HM_ERR_STORAGE;
    int rc = SQLITE_DONE;
    for (size_t f = first; rc == SQLITE_DONE && f < first + count; f++) {
        const struct pool_frame *frame = &pool->frames[f];
        for (size_t e = frame->first_event;
             rc == SQLITE_DONE && e < frame->first_event + frame->event_count; e++) {
            const struct event *event = &pool->events[e];
            const struct rendered_event *rendered = &pool->rendered[e];
            sqlite3_bind_blob(state->insert, 1, event->event_id, UUID_SIZE, SQLITE_STATIC);
            sqlite3_bind_blob(state->insert, 2, event->tenant_id, UUID_SIZE, SQLITE_STATIC);
            sqlite3_bind_int64(state->insert, 3, event->timestamp_us);
            sqlite3_bind_text(state->insert, 4, rendered->event_type, -1, SQLITE_STATIC);
            sqlite3_bind_text(state->insert, 5, pool->text + rendered->metadata_offset, -1,
                              SQLITE_STATIC);
            rc = sqlite3_step(state->insert);
            sqlite3_reset(state->insert);
        }
    }
    if (rc != SQLITE_DONE) {
        fprintf(stderr, "meterbench: sqlite: insert failed: %s\n", sqlite3_errmsg(state->db));
        sqlite_exec(state->db, "ROLLBACK");
        return HM_ERR_STORAGE;
    }
    return sqlite_exec(state->db, "COMMIT");
}

static void sqlite_close_state(void *context)
{
    struct sqlite_state *state = context;
    sqlite3_finalize(state->insert);
    sqlite3_close(state->db);
    free(state);
}

/* The rollups of rollup/ledger.c as one GROUP BY query over usage_events. */
static int sqlite_rollups(sqlite3 *db, struct rollup_map *got)
{
    char sql[4096];
    snprintf(sql, sizeof sql,
             "WITH e AS (SELECT tenant_id AS t, CAST(strftime('%%Y%%m', timestamp / 1000000, "
             "'unixepoch') AS INTEGER) AS p, event_type, metadata AS m FROM usage_events) "
             "SELECT t, p, %d, event_type, count(*), count(*) FROM e GROUP BY t, p, event_type "
             "UNION ALL SELECT t, p, %d, json_extract(m, '$.gpu_type'), "
             "sum(json_extract(m, '$.duration_s')), count(*) FROM e "
             "WHERE event_type = 'gpu_allocation' GROUP BY 1, 2, 4 "
             "UNION ALL SELECT t, p, %d, json_extract(m, '$.model'), "
             "sum(json_extract(m, '$.input_tokens') - json_extract(m, '$.cached_input_tokens')), "
             "count(*) FROM e WHERE event_type = 'inference' AND json_extract(m, "
             "'$.input_tokens') > json_extract(m, '$.cached_input_tokens') GROUP BY 1, 2, 4 "
             "UNION ALL SELECT t, p, %d, json_extract(m, '$.model'), "
             "sum(json_extract(m, '$.output_tokens')), count(*) FROM e WHERE event_type = "
             "'inference' AND json_extract(m, '$.output_tokens') > 0 GROUP BY 1, 2, 4 "
             "UNION ALL SELECT t, p, %d, json_extract(m, '$.model'), "
             "sum(json_extract(m, '$.cached_input_tokens')), count(*) FROM e WHERE event_type = "
             "'inference' AND json_extract(m, '$.cached_input_tokens') > 0 GROUP BY 1, 2, 4 "
             "UNION ALL SELECT t, p, %d, '', sum(json_extract(m, '$.bytes_transferred')), "
             "count(*) FROM e WHERE event_type = 'storage' AND json_extract(m, "
             "'$.bytes_transferred') > 0 GROUP BY 1, 2 "
             "UNION ALL SELECT t, p, %d, '', count(*), count(*) FROM e "
             "WHERE event_type = 'api_call' GROUP BY 1, 2",
             ROLLUP_EVENTS, ROLLUP_GPU_SECONDS, ROLLUP_INPUT_TOKENS, ROLLUP_OUTPUT_TOKENS,
             ROLLUP_CACHED_INPUT_TOKENS, ROLLUP_TRANSFER_BYTES, ROLLUP_API_CALLS);
    sqlite3_stmt *statement = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &statement, NULL) != SQLITE_OK) {
        fprintf(stderr, "meterbench: sqlite: rollup query failed: %s\n", sqlite3_errmsg(db));
        return HM_ERR_STORAGE;
    }
    int rc;
    while ((rc = sqlite3_step(statement)) == SQLITE_ROW) {
        char tenant[UUID_TEXT_SIZE];
        if (sqlite3_column_bytes(statement, 0) != UUID_SIZE)
            break;
        uuid_format(sqlite3_column_blob(statement, 0), tenant);
        const unsigned char *dimension = sqlite3_column_text(statement, 3);
        rollup_map_add(got, tenant, (uint32_t)sqlite3_column_int64(statement, 1),
                       sqlite3_column_int(statement, 2), dimension ? (const char *)dimension : "",
                       (unsigned __int128)sqlite3_column_int64(statement, 4),
                       (uint64_t)sqlite3_column_int64(statement, 5));
    }
    sqlite3_finalize(statement);
    return rc == SQLITE_DONE ? HM_OK : HM_ERR_STORAGE;
}

static void sqlite_check(struct bench *bench, struct peer_result *result)
{
    char path[BENCH_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/sqlite-0.db", bench->temp_dir);
    sqlite3 *db = NULL;
    sqlite3_stmt *statement = NULL;
    struct rollup_map got = { 0 };
    if (sqlite3_open(path, &db) != SQLITE_OK || rollup_map_init(&got) != HM_OK ||
        sqlite3_prepare_v2(db, "SELECT count(*) FROM usage_events", -1, &statement, NULL) !=
            SQLITE_OK ||
        sqlite3_step(statement) != SQLITE_ROW) {
        fail(result, "the SQLite database could not be read back");
    } else {
        result->stored = (uint64_t)sqlite3_column_int64(statement, 0);
        result->count_ok =
            result->stored == pool_events_in(&bench->pool, bench->closed_frames);
        int64_t started = bench_now_ns();
        if (sqlite_rollups(db, &got) == HM_OK) {
            result->rollup_query_s = (double)(bench_now_ns() - started) / 1e9;
            bench_check_rollups(bench, result, &got);
        } else {
            fail(result, "the SQLite rollup query failed");
        }
    }
    sqlite3_finalize(statement);
    sqlite3_close(db);
    rollup_map_free(&got);
}

int peer_sqlite(struct bench *bench, struct peer_result *result)
{
    result->name = "sqlite";
    result->durability = "durable: WAL, synchronous=FULL, group commit";
    size_t frames = bench->pool.frame_count;
    if (pool_render(&bench->pool, frames) != HM_OK) {
        fail(result, "the events could not be rendered");
        return HM_ERR_NOMEM;
    }
    struct sqlite_peer peer = { .bench = bench };
    struct batch_ops ops = { .peer = &peer, .open = sqlite_open_state, .store = sqlite_store,
                             .close = sqlite_close_state };
    return run_embedded(bench, result, &ops, &peer.phase, sqlite_check);
}
