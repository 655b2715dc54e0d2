// The precompiled header every LibTorch target shares (see CMakeLists.txt): torch/torch.h
// costs ~15 s per translation unit on a small machine; precompiled, it costs almost nothing.
#pragma once
#include <torch/torch.h>
