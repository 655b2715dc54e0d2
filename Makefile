# The two commands: `make run` (the main job) and `make test`. Both install what is missing.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all bootstrap build run test bench clean
all: build

bootstrap:
	@bash scripts/bootstrap.sh

$(BUILD)/build.ninja: | bootstrap
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

build: bootstrap $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

# Until the training job exists, the main job is the all-reduce benchmark on 2 local ranks.
run: build
	$(BUILD)/chorus bench collectives --op allreduce --ranks 2 --transport shm --algo auto \
	  --min-bytes 4K --max-bytes 64M

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

bench: build
	bash bench/peers/run.sh

clean:
	rm -rf $(BUILD)
