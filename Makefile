# gdr2: the two commands of the README, and a few more.
#   make verify   install missing Debian packages, build, run gdr2-verify on what this machine has
#   make test     same set-up, then the whole test suite through ctest
BUILD ?= build
JOBS  ?= $(shell nproc)
CMAKE_ARGS ?=

.PHONY: deps configure build verify test bench gpu-check clean

deps:
	@scripts/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

verify: configure
	cmake --build $(BUILD) -j $(JOBS) --target gdr2-verify
	$(BUILD)/verify/gdr2-verify

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: configure
	cmake --build $(BUILD) -j $(JOBS) --target gdr2-bench
	$(BUILD)/bench/gdr2-bench

# On the GPU machine (see docs/performance.md): build for sm_90, GPU tests, sanitizers, benchmark.
gpu-check:
	scripts/gpu-check.sh

clean:
	rm -rf $(BUILD)
