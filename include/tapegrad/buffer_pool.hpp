#pragma once
/// \file
/// BufferPool<T>: tensors lent out and taken back, so that buffers needed for part of a step
/// (the gradients of intermediate values during backward) occupy the peak of what is live at
/// once, not the sum. acquire() hands out the smallest free buffer that is large enough (best
/// fit), else allocates one; release() takes it back. A training loop asks for the same sizes in
/// the same order every step, so after the first step every request is met by a buffer the pool
/// already has: no allocation.

#include <cstdint>
#include <utility>
#include <vector>

#include "tapegrad/tensor.hpp"

namespace tapegrad {

/// Tensors lent out and taken back, so that buffers needed for part of a step occupy the peak of
/// what is live at once, not the sum (see the file's description).
template <class T>
class BufferPool {
 public:
  /// Makes `t` (an empty tensor, e.g. one release() emptied) a tensor of shape s whose storage
  /// no one else holds; its contents are stale. Fills the caller's tensor rather than returning
  /// one: a temporary Tensor, written field by field and copied at once, costs a store-forwarding
  /// stall, a third of the tape's whole per-op cost on small tensors.
  void acquire(const Shape& s, Tensor<T>& t) {
    const int64_t n = s.numel();
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i].capacity() >= n &&
          (best == free_.size() || free_[i].capacity() < free_[best].capacity()))
        best = i;
    if (best < free_.size()) {
      t = std::move(free_[best]);
      if (best + 1 < free_.size()) free_[best] = std::move(free_.back());
      free_.pop_back();
    } else {
      t = empty_;
      owned_bytes_ += bytes(n);
    }
    t.resize(s);
    in_use_bytes_ += bytes(t.capacity());
    peak_in_use_bytes_ = std::max(peak_in_use_bytes_, in_use_bytes_);
  }
  /// Takes back a tensor acquire() gave (t is left empty). A buffer someone still holds (a copy
  /// of a gradient a caller kept) is left to them, not lent again.
  void release(Tensor<T>& t) {
    in_use_bytes_ -= bytes(t.capacity());
    if (t.use_count() > 1)
      owned_bytes_ -= bytes(t.capacity());
    else
      free_.push_back(std::move(t));
    t = empty_;  // copied from one built long ago (see acquire)
  }

  ///@{
  /// Bytes lent out now, at most since reset_peak(), and held in all (lent or free).
  int64_t in_use_bytes() const { return in_use_bytes_; }
  int64_t peak_in_use_bytes() const { return peak_in_use_bytes_; }
  int64_t owned_bytes() const { return owned_bytes_; }
  ///@}
  /// Starts the peak from what is lent out now.
  void reset_peak() { peak_in_use_bytes_ = in_use_bytes_; }

 private:
  static int64_t bytes(int64_t n) { return std::max<int64_t>(n, 1) * int64_t(sizeof(T)); }

  std::vector<Tensor<T>> free_;
  const Tensor<T> empty_;
  int64_t in_use_bytes_ = 0, peak_in_use_bytes_ = 0, owned_bytes_ = 0;
};

}  // namespace tapegrad
