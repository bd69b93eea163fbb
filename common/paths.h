/* paths: where things live by default. */
#ifndef SD_PATHS_H
#define SD_PATHS_H

/* The default model (the set-up step's cache): $SPECD_MODEL_DIR or ~/.cache/specd/models, file
 * SmolLM2-135M-Instruct.Q4_1.gguf. A static buffer. */
const char *paths_default_model(void);

#endif
