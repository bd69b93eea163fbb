/* log: leveled logging to stderr. The level is checked before any formatting. Every line carries
 * the process role (set once with log_set_role) and the module name. */
#ifndef SD_LOG_H
#define SD_LOG_H

typedef enum { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG } log_level;

extern log_level log_threshold;

void log_set_role(const char *role);
void log_set_level(log_level lvl);
/* Parse "error|warn|info|debug"; returns -1 on an unknown name. */
int log_level_parse(const char *s);
void log_write(log_level lvl, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_AT(lvl, mod, ...)                                                                      \
    do {                                                                                           \
        if ((lvl) <= log_threshold)                                                                \
            log_write((lvl), (mod), __VA_ARGS__);                                                  \
    } while (0)
#define LOG_ERROR(mod, ...) LOG_AT(LOG_LEVEL_ERROR, mod, __VA_ARGS__)
#define LOG_WARN(mod, ...) LOG_AT(LOG_LEVEL_WARN, mod, __VA_ARGS__)
#define LOG_INFO(mod, ...) LOG_AT(LOG_LEVEL_INFO, mod, __VA_ARGS__)
#define LOG_DEBUG(mod, ...) LOG_AT(LOG_LEVEL_DEBUG, mod, __VA_ARGS__)

#endif
