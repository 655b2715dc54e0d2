// Links chorus::chorus; configured and generated but not built (it would take a LibTorch build).
#include "chorus/comm/group.h"
#include "chorus/parallel/data/ddp.h"

int main() { return 0; }
