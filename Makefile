# Thin wrapper over CMake: `make demo` and `make test` are the README's two commands.
# Both run the idempotent set-up first (Debian packages + default model).

BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
WERROR     ?= OFF
JOBS       ?= $(shell nproc)
MODEL_DIR  ?= $(HOME)/.cache/specd/models
MODEL      ?= $(MODEL_DIR)/SmolLM2-135M-Instruct.Q4_1.gguf
FUZZ_SECONDS ?= 60
export SPECD_MODEL_DIR := $(MODEL_DIR)

.PHONY: all setup build demo test test-asan fuzz bench format clean

all: build

setup:
	@scripts/setup.sh >/dev/null

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DSPECD_WERROR=$(WERROR) \
	      -DSPECD_MODEL=$(MODEL) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

demo: setup build
	$(BUILD)/specd local --chat -n 160 \
	    --prompt "Explain in three sentences why the sky is blue."

test: setup build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: setup
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPECD_SANITIZE=ON \
	      -DSPECD_WERROR=$(WERROR) -DSPECD_MODEL=$(MODEL) >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS) -LE slow

fuzz: setup
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPECD_FUZZ=ON \
	      >/dev/null
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_gguf fuzz_tok fuzz_wire
	mkdir -p $(FUZZ_BUILD)/fuzz-corpus $(FUZZ_BUILD)/fuzz-corpus-tok $(FUZZ_BUILD)/fuzz-corpus-wire
	$(FUZZ_BUILD)/fuzz_gguf -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	    -print_final_stats=1 $(FUZZ_BUILD)/fuzz-corpus tests/fuzz/corpus
	SPECD_MODEL=$(MODEL) $(FUZZ_BUILD)/fuzz_tok -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	    -print_final_stats=1 $(FUZZ_BUILD)/fuzz-corpus-tok tests/fuzz/corpus_tok
	UCX_HANDLE_ERRORS=none $(FUZZ_BUILD)/fuzz_wire -max_total_time=$(FUZZ_SECONDS) -max_len=8192 \
	    -print_final_stats=1 $(FUZZ_BUILD)/fuzz-corpus-wire tests/fuzz/corpus_wire

bench: setup build
	mkdir -p bench/out
	$(BUILD)/bench_engine --model $(MODEL)
	$(BUILD)/bench_spec --model $(MODEL)

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
