// glibc's allocator returns freed memory to the kernel eagerly: a block above the (adaptive)
// mmap threshold is unmapped when freed, and free space at the top of the heap beyond the trim
// threshold is given back. A training step frees and reallocates the same few-megabyte tensors
// every step, so with those defaults each step faults the same memory in again, page by page,
// zeroed by the kernel (measured on the GPT of bench/model-parallel/small.toml: about 6,500
// page faults per step in `chorus train`, and a few dozen with the settings below).
//
// keepFreedMemory() sets M_MMAP_THRESHOLD (64 MiB) and M_TRIM_THRESHOLD (256 MiB) with
// mallopt, so freed tensors' memory stays in the process and is reused. The cost is resident
// memory that is not handed back while the process lives (at most what it held at its peak,
// plus up to 256 MiB of free heap top). It changes nothing, and returns false, when the user
// already tuned the allocator: MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_
// or a GLIBC_TUNABLES naming glibc.malloc in the environment. The `chorus` binary calls it at
// start (workers inherit it); a user's own training program may call it first thing in main().
//
// Thread-safety: call before other threads allocate (mallopt is process-wide).
#pragma once

namespace chorus {

bool keepFreedMemory();

}  // namespace chorus
