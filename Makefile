# The two commands: `make run` (the main job) and `make test`. Both install what is missing.
BUILD ?= build
comma := ,
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all bootstrap build run test bench sanitize package fuzz clean
all: build

bootstrap:
	@bash scripts/bootstrap.sh

$(BUILD)/build.ninja: | bootstrap
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

build: bootstrap $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

# The main job: the default MLP on Fashion-MNIST with 2 local workers (configs/default.toml).
# Each `make run` starts the job afresh in runs/default, replacing the last one's checkpoints
# (output.overwrite); resume one with `build/chorus train configs/default.toml --nproc 2 --resume`.
run: build
	$(BUILD)/chorus train configs/default.toml --nproc 2 --set output.overwrite=true

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

# Peer comparisons (bench/results/collectives.md, bench/results/ddp.md) and the algorithm
# sweep (bench/results/algorithms.md).
bench: build
	bash bench/peers/run.sh $(BUILD)
	bash bench/algos/run.sh $(BUILD)
	bash bench/ddp/run.sh $(BUILD)

# The suite under sanitizers, in its own build dir: make sanitize SAN=address,undefined (or thread).
SAN ?= address,undefined
sanitize: bootstrap
	cmake -S . -B build-$(subst $(comma),-,$(SAN)) -G Ninja -DCHORUS_SANITIZE=$(SAN)
	cmake --build build-$(subst $(comma),-,$(SAN)) -j $(JOBS)
	cd build-$(subst $(comma),-,$(SAN)) && ASAN_OPTIONS=detect_leaks=0 ctest --output-on-failure -j $(JOBS) --timeout 900 -E 'fuzz|mpi'

# A .deb of the chorus CLI, headers, libraries and CMake package (docs/install.md):
# $(BUILD)/chorus_<version>_<arch>.deb, for `apt install ./build/chorus_*.deb`. Builds only
# what the package holds (the CLI links every library), not the tests.
package: bootstrap $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS) --target chorus
	cd $(BUILD) && cpack -G DEB

# Every fuzz target (fuzz/*_fuzz.cc, clang + libFuzzer + ASan/UBSan) for FUZZ_SECONDS each, one
# after the other on one core; prints each target's executions and writes bench/results/fuzz.md.
FUZZ_SECONDS ?= 60
fuzz: bootstrap
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash bench/fuzz/run.sh $(BUILD)

clean:
	rm -rf $(BUILD)
