# litestage: every user-facing command. `make demo` and `make test` install
# what they need, configure and build, so each is the only command to type.
#
#   make build   release build; binaries in build/bin/
#   make test    a short fuzz run, then unit, golden and integration tests
#   make demo    the gRPC server on the default model, a multi-stage request, its metrics
#   make bench   benchmarks against peers measured in the same run
#   make format  clang-format every C++ source

SHELL := /bin/bash
JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 20
# Every libFuzzer target (tests/fuzz/CMakeLists.txt); `make fuzz` builds and runs them.
FUZZ_TARGETS := fuzz_safetensors_header fuzz_gguf fuzz_tokenizer fuzz_sp_model \
  fuzz_profile fuzz_pipeline

# Tests read shared models and data through LITESTAGE_SHARED; ctest runs in
# the build tree, so a relative path is made absolute here.
# `override` because .ci/run passes it on the command line.
ifdef LITESTAGE_SHARED
override LITESTAGE_SHARED := $(abspath $(LITESTAGE_SHARED))
export LITESTAGE_SHARED
endif

.PHONY: all deps build debug asan test test-asan fuzz demo bench format clean

all: build

deps:
	@scripts/install-deps.sh

build/release/build.ninja: | deps
	cmake --preset release

build: deps build/release/build.ninja
	cmake --build --preset release -j $(JOBS)

debug: deps
	cmake --preset debug && cmake --build --preset debug -j $(JOBS)

asan: deps
	cmake --preset asan && cmake --build --preset asan -j $(JOBS)

# The default-model tests (gguf_golden_test, cli_test) need the GGUF; the
# fetch (PyPI) must succeed, since those tests are part of the suite.
# The fuzzers run first so that ctest's summary closes the output.
test: build
	$(MAKE) fuzz
	@gguf="$$(scripts/fetch-default-model.sh)" || { \
	  echo "make test: scripts/fetch-default-model.sh failed (see above)" >&2; exit 1; }; \
	LITESTAGE_DEFAULT_GGUF="$$gguf" ctest --preset release -j $(JOBS)

test-asan: asan
	ctest --preset asan -j $(JOBS)

# Builds the libFuzzer targets with clang and runs each briefly.
fuzz: deps
	cmake --preset fuzz
	cmake --build --preset fuzz -j $(JOBS) --target $(FUZZ_TARGETS)
	scripts/run-fuzzers.sh build/fuzz/bin $(FUZZ_SECONDS) $(FUZZ_TARGETS)

demo: build
	scripts/demo.sh

bench: build
	bench/run.sh

format:
	git ls-files '*.cc' '*.h' | xargs clang-format -i

clean:
	rm -rf build
