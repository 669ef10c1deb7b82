/* meterd: the metering daemon. Receives usage frames and stores them in the ledger. */
#include "common/log.h"
#include "common/status.h"
#include "engine/lib/data_lock.h"
#include "engine/lib/master_setup.h"
#include "engine/lib/store.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: meterd [options]\n"
            "\n"
            "Receives signed usage frames over TCP and UDP and stores every event once in\n"
            "the ledger, an LMDB environment in the data directory.\n"
            "\n"
            "  --data DIR            data directory (default ./meter-data, or $METER_DATA)\n"
            "  --host ADDRESS        listen address, IPv4 or IPv6 literal (default 127.0.0.1)\n"
            "  --tcp-port PORT       TCP port for acknowledged frames (default 7600; 0 picks one)\n"
            "  --udp-port PORT       UDP port for unacknowledged frames (default 7601; 0 picks one)\n"
            "  --port-file FILE      write \"tcp=PORT udp=PORT\" here once listening\n"
            "  --stats-file FILE     write the counters here as JSON every 2 s and at the stop\n"
            "                        (default DIR/meterd-stats.json of --data)\n"
            "  --master-key FILE     the master key that wraps the keys' signing keys\n"
            "                        (default $METER_MASTER_KEY, else DIR/master.key; created\n"
            "                        there when missing and no key is wrapped yet)\n"
            "  --map-size MIB        ledger map size in MiB (default 16384)\n"
            "  --index-memory MIB    memory for the index of stored event ids, 1 to 1048576\n"
            "                        (default 128); once the ids in memory take half of it,\n"
            "                        they move to a run on disk, a file with no name in DIR\n"
            "  --max-connections N   open TCP connections (default 256); at the limit a new\n"
            "                        connection takes the slot of the oldest one without an\n"
            "                        accepted frame, or else of the one idle the longest\n"
            "                        (both 1 s or more)\n"
            "  --frame-timeout-ms MS close a connection whose started frame has not arrived\n"
            "                        whole within MS milliseconds (default 10000)\n"
            "  --idle-timeout-ms MS  close a connection idle for MS milliseconds (default 60000)\n"
            "  --max-event-age-days DAYS\n"
            "                        reject events older than DAYS days, 1 to 36500, or none\n"
            "                        (default none: late usage of closed months is billed later)\n"
            "  --max-event-skew-seconds SECONDS\n"
            "                        reject events dated more than SECONDS ahead of this\n"
            "                        server's clock, 1 to 31622400, or none (default 900)\n"
            "  --log-level LEVEL     error, warn, info or debug (default info)\n"
            "  --help                show this text\n");
}

/* Parses a decimal integer in [min, max]; returns -1 and prints an error naming the option otherwise. */
static int parse_number(const char *option, const char *text, long long min, long long max,
                        long long *out)
{
    char *end = NULL;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < min || value > max) {
        fprintf(stderr, "meterd: invalid %s \"%s\": expected an integer from %lld to %lld\n",
                option, text, min, max);
        return -1;
    }
    *out = value;
    return 0;
}

/* Parses a limit of 1 to max, or prints an error that also names the word "none". */
static int parse_limit(const char *option, const char *text, long long max, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 1 || value > max) {
        fprintf(stderr, "meterd: invalid %s \"%s\": expected an integer from 1 to %lld, or none "
                "for no limit\n", option, text, max);
        return -1;
    }
    *out = value;
    return 0;
}

/*
 * Checks a --stats-file path: not empty, not a directory, and in a directory
 * that exists. Prints an error naming the value and returns -1 otherwise.
 */
static int stats_file_check(const char *path)
{
    struct stat status;
    if (path[0] == '\0') {
        fprintf(stderr, "meterd: invalid --stats-file \"\": give a file path\n");
        return -1;
    }
    if (stat(path, &status) == 0 && S_ISDIR(status.st_mode)) {
        fprintf(stderr, "meterd: invalid --stats-file \"%s\": it is a directory; give a file "
                "path such as %s/meterd-stats.json\n", path, path);
        return -1;
    }
    char directory[PATH_MAX];
    snprintf(directory, sizeof directory, "%s", path);
    char *slash = strrchr(directory, '/');
    if (slash == NULL)
        snprintf(directory, sizeof directory, ".");
    else if (slash == directory)
        slash[1] = '\0';
    else
        *slash = '\0';
    if (stat(directory, &status) != 0 || !S_ISDIR(status.st_mode)) {
        fprintf(stderr, "meterd: invalid --stats-file \"%s\": directory %s does not exist; "
                "create it or give another path\n", path, directory);
        return -1;
    }
    return 0;
}

/*
 * Takes the data directory's exclusive meterd lock, so that two servers never
 * ingest into one ledger. The lock is released when the process exits, even
 * by SIGKILL. Returns the lock's descriptor or -1 after printing why.
 */
static int lock_data_dir(const char *data_dir)
{
    if (mkdir(data_dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "meterd: cannot create data directory %s: %s\n", data_dir,
                strerror(errno));
        return -1;
    }
    char path[PATH_MAX], holder[32];
    snprintf(path, sizeof path, "%s/meterd.lock", data_dir);
    int fd = data_dir_lock(data_dir, holder, sizeof holder);
    if (fd < 0 && errno == EWOULDBLOCK) {
        fprintf(stderr, "meterd: another meterd (pid %s) is serving %s; stop it or give another "
                "--data directory\n", holder[0] ? holder : "unknown", data_dir);
        return -1;
    }
    if (fd < 0) {
        fprintf(stderr, "meterd: cannot open lock file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char pid[32];
    int size = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)size, 0) != size)
        fprintf(stderr, "meterd: warning: cannot write the pid to %s: %s\n", path,
                strerror(errno));
    return fd;
}

int main(int argc, char **argv)
{
    const char *data_dir = getenv("METER_DATA") ? getenv("METER_DATA") : "meter-data";
    const char *master_key_path = getenv("METER_MASTER_KEY");
    struct server_options options = { .host = "127.0.0.1", .tcp_port = 7600, .udp_port = 7601 };
    struct ledger_options ledger_options = { 0 };
    static const struct option long_options[] = {
        { "data", required_argument, NULL, 'd' },
        { "host", required_argument, NULL, 'H' },
        { "tcp-port", required_argument, NULL, 't' },
        { "udp-port", required_argument, NULL, 'u' },
        { "port-file", required_argument, NULL, 'p' },
        { "stats-file", required_argument, NULL, 'S' },
        { "master-key", required_argument, NULL, 'K' },
        { "map-size", required_argument, NULL, 'm' },
        { "index-memory", required_argument, NULL, 'x' },
        { "max-connections", required_argument, NULL, 'c' },
        { "frame-timeout-ms", required_argument, NULL, 'f' },
        { "idle-timeout-ms", required_argument, NULL, 'i' },
        { "max-event-age-days", required_argument, NULL, 'a' },
        { "max-event-skew-seconds", required_argument, NULL, 's' },
        { "log-level", required_argument, NULL, 'l' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int option;
    long long value;
    while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (option) {
        case 'd': data_dir = optarg; break;
        case 'H': options.host = optarg; break;
        case 't':
            if (parse_number("--tcp-port", optarg, 0, 65535, &value))
                return 2;
            options.tcp_port = (uint16_t)value;
            break;
        case 'u':
            if (parse_number("--udp-port", optarg, 0, 65535, &value))
                return 2;
            options.udp_port = (uint16_t)value;
            break;
        case 'p': options.port_file = optarg; break;
        case 'K': master_key_path = optarg; break;
        case 'S':
            if (stats_file_check(optarg) != 0)
                return 2;
            options.stats_file = optarg;
            break;
        case 'm':
            if (parse_number("--map-size", optarg, 1, 1 << 24, &value))
                return 2;
            ledger_options.map_size = (size_t)value << 20;
            break;
        case 'x':
            if (parse_number("--index-memory", optarg, 1, 1 << 20, &value))
                return 2;
            ledger_options.index_memory = (size_t)value << 20;
            break;
        case 'c':
            if (parse_number("--max-connections", optarg, 1, SERVER_CONNECTIONS_MAX, &value))
                return 2;
            options.connections_max = (uint32_t)value;
            break;
        case 'f':
            if (parse_number("--frame-timeout-ms", optarg, 1, 3600000, &value))
                return 2;
            options.frame_timeout_ms = (uint32_t)value;
            break;
        case 'i':
            if (parse_number("--idle-timeout-ms", optarg, 1, 86400000, &value))
                return 2;
            options.idle_timeout_ms = (uint32_t)value;
            break;
        case 'a':
            if (strcmp(optarg, "none") == 0)
                options.max_event_age_s = 0;
            else if (parse_limit("--max-event-age-days", optarg, 36500, &value))
                return 2;
            else
                options.max_event_age_s = value * 86400;
            break;
        case 's':
            if (strcmp(optarg, "none") == 0)
                options.max_event_skew_s = -1;
            else if (parse_limit("--max-event-skew-seconds", optarg, 31622400, &value))
                return 2;
            else
                options.max_event_skew_s = value;
            break;
        case 'l':
            if (log_set_level(optarg) != 0) {
                fprintf(stderr, "meterd: invalid --log-level \"%s\": use error, warn, info or "
                        "debug\n", optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "meterd: unexpected argument \"%s\"; see meterd --help\n", argv[optind]);
        return 2;
    }

    int lock_fd = lock_data_dir(data_dir);
    if (lock_fd < 0)
        return 1;
    struct store store = { 0 };
    int rc = ledger_open(&store.ledger, data_dir, &ledger_options);
    if (rc != HM_OK) {
        fprintf(stderr, "meterd: cannot open the ledger: %s\n", ledger_open_error());
        return 1;
    }
    char stats_path[PATH_MAX];
    if (options.stats_file == NULL) {
        snprintf(stats_path, sizeof stats_path, "%s/meterd-stats.json", data_dir);
        options.stats_file = stats_path;
    }
    log_info("meterd", "starting data=%s", data_dir);
    char master_path[PATH_MAX], error[512];
    if (master_key_path == NULL) {
        snprintf(master_path, sizeof master_path, "%s/" MASTER_KEY_FILE_NAME, data_dir);
        master_key_path = master_path;
    }
    struct master_setup_result master;
    if (master_setup(store.ledger, master_key_path, 0, &master, error, sizeof error) != HM_OK) {
        fprintf(stderr, "meterd: %s\n", error);
        ledger_close(store.ledger);
        return 1;
    }
    if (master.created)
        log_warn("meterd", "created the master key file %s; keep a copy apart from the "
                 "ledger's backups: without it meterd cannot check the frames of this "
                 "ledger's keys",
                 master_key_path);
    if (master.warning[0] != '\0')
        log_warn("meterd", "%s", master.warning);
    if (master.wrapped > 0)
        log_info("meterd", "wrapped %zu signing keys that were stored as they were",
                 master.wrapped);
    /* The id index is built before listening, so that the first frame does not wait for it. */
    if ((rc = ledger_writer_prepare(store.ledger)) != HM_OK) {
        fprintf(stderr, "meterd: cannot read the stored events to index their ids: %s\n",
                hm_status_str(rc));
        ledger_close(store.ledger);
        return 1;
    }

    store_index_read(&store, &options.index);
    struct server_hooks hooks = { 0 };
    store_hooks(&store, &hooks);
    rc = server_run(&options, &hooks, NULL);
    store_release(&store);
    ledger_close(store.ledger);
    close(lock_fd);
    return rc == HM_OK ? 0 : 1;
}
