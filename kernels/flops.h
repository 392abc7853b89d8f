// kernels/flops.h - counting the real arithmetic of a forward pass (2 FLOPs per multiply-add).
// Ops report their work with add_flops(); a FlopCounter on the calling thread collects it (ops are called from
// the thread that runs the model, their OpenMP workers do not report). Without a counter add_flops is a no-op.
#pragma once

namespace mambacv::ops {

class FlopCounter {
 public:
  FlopCounter();
  ~FlopCounter();
  FlopCounter(const FlopCounter&) = delete;
  FlopCounter& operator=(const FlopCounter&) = delete;
  double flops() const { return total_; }

 private:
  friend void add_flops(double);
  double total_ = 0;
  FlopCounter* prev_ = nullptr;
};

void add_flops(double f);

}  // namespace mambacv::ops
