/*
 * Logging: one line per event on stderr, "ts level component: message".
 *
 * Usage: call log_init("router") once at start (the component tag appears on
 * every line), optionally log_set_level() from a --log-level flag, then
 * LOG_INFO("listening on %s", addr). Thread-safe: each line is written with a
 * single write(2). The level can also come from CORRAL_LOG_LEVEL
 * (debug|info|warn|error).
 */
#ifndef CORRAL_COMMON_LOG_H
#define CORRAL_COMMON_LOG_H

enum log_level { LOG_LEVEL_DEBUG = 0, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

void log_init(const char *component);
void log_set_level(enum log_level lvl);
/* Parses "debug"/"info"/"warn"/"error"; returns -1 for anything else. */
int log_parse_level(const char *s);
int log_enabled(enum log_level lvl);
void log_write(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_DEBUG(...) do { if (log_enabled(LOG_LEVEL_DEBUG)) log_write(LOG_LEVEL_DEBUG, __VA_ARGS__); } while (0)
#define LOG_INFO(...)  log_write(LOG_LEVEL_INFO, __VA_ARGS__)
#define LOG_WARN(...)  log_write(LOG_LEVEL_WARN, __VA_ARGS__)
#define LOG_ERROR(...) log_write(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
