#include "kernels/flops.h"

namespace mambacv::ops {

namespace {
thread_local FlopCounter* g_counter = nullptr;
}

FlopCounter::FlopCounter() : prev_(g_counter) { g_counter = this; }
FlopCounter::~FlopCounter() { g_counter = prev_; }

void add_flops(double f) {
  for (FlopCounter* c = g_counter; c; c = c->prev_) c->total_ += f;
}

}  // namespace mambacv::ops
