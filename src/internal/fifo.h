// Fifo<T>: a first-in first-out queue over one std::vector that keeps its storage, for
// queues handed between threads once per call (an engine's calls for its workers).
// Once it has grown to the queue's usual depth, pushing and popping allocate nothing;
// std::deque allocates a chunk for each element bigger than 256 bytes, and frees it on
// whichever thread pops it. Storage for more than kKeptCapacity elements is given back
// when the queue empties, so a burst does not pin its peak.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace zerocan::internal {

template <class T>
class Fifo {
 public:
  using iterator = typename std::vector<T>::iterator;

  bool empty() const noexcept { return head_ == items_.size(); }
  size_t size() const noexcept { return items_.size() - head_; }
  T& front() { return items_[head_]; }
  void push_back(T&& value) { items_.push_back(std::move(value)); }
  // The popped element's slot is reset at once, so it holds nothing of the element.
  void pop_front() {
    items_[head_] = T{};
    if (++head_ == items_.size()) {
      clear();
      if (items_.capacity() > kKeptCapacity) std::vector<T>().swap(items_);
    } else if (head_ >= kCompactAfter && head_ * 2 >= items_.size()) {
      // A queue that never empties: drop the consumed front now and then (amortized
      // O(1) per element).
      items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
  }
  iterator begin() { return items_.begin() + static_cast<std::ptrdiff_t>(head_); }
  iterator end() { return items_.end(); }
  iterator erase(iterator it) { return items_.erase(it); }
  void clear() noexcept {
    items_.clear();
    head_ = 0;
  }
  void swap(Fifo& other) noexcept {
    items_.swap(other.items_);
    std::swap(head_, other.head_);
  }

 private:
  static constexpr size_t kCompactAfter = 64;
  static constexpr size_t kKeptCapacity = 1024;
  std::vector<T> items_;
  size_t head_ = 0;
};

}  // namespace zerocan::internal
