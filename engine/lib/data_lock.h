/*
 * The lock of a data directory, DIR/meterd.lock: meterd holds it while it
 * serves the directory, and commands that must not run beside meterd take
 * it too. The kernel releases it when the process ends, even by SIGKILL.
 */
#ifndef HM_DATA_LOCK_H
#define HM_DATA_LOCK_H

#include <stddef.h>

/*
 * Opens DIR/meterd.lock and takes its exclusive lock without waiting.
 * Returns the descriptor, or -1 with errno set. When another process holds
 * the lock, errno is EWOULDBLOCK and `holder` gets the pid that the file
 * names (empty when it names none).
 */
int data_dir_lock(const char *data_dir, char *holder, size_t holder_size);

#endif
