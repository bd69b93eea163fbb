#include "paths.h"

#include <stdio.h>
#include <stdlib.h>

const char *paths_default_model(void)
{
    static char path[4096];
    const char *dir = getenv("SPECD_MODEL_DIR");
    if (dir && *dir)
        snprintf(path, sizeof path, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", dir);
    else
        snprintf(path, sizeof path, "%s/.cache/specd/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : ".");
    return path;
}
