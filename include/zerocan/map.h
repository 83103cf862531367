// Many calls of one function: zerocan::Map, the C++ counterpart of Python's client.map.
//
//   std::vector<std::tuple<int, int>> pairs = ...;
//   std::vector<zerocan::Result> sums = zerocan::Map(client, "add", pairs,
//       {.progress = [](size_t done, size_t total) { ... }});
//
// One call per element of `items` (an element is the call's one argument, or a
// std::tuple / std::pair of its arguments), at most `max_in_flight` sent and not yet
// answered, results in the order of `items`. The first call that fails ends the map: no
// further call is sent, the calls still in flight are awaited (their results dropped),
// and a MapError naming the item is thrown. Arguments are copied into their calls
// (elements are lvalues of `items`), so `items` may change once Map returns.
#pragma once

#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "zerocan/client.h"
#include "zerocan/error.h"

namespace zerocan {

struct MapOptions {
  // Calls sent and not yet answered, at most (at least 1).
  size_t max_in_flight = 256;
  // Called on the calling thread after each result, in order: (results so far, items in
  // all; 0 when `items` has no size()).
  std::function<void(size_t done, size_t total)> progress;
};

// The failure of item `index` of a Map: what() names the item and the original error;
// cause() rethrows it (RemoteError, TimeoutError, TransportError).
class MapError : public Error {
 public:
  MapError(size_t index, std::exception_ptr cause, const std::string& what)
      : Error(what), index_(index), cause_(std::move(cause)) {}
  size_t index() const noexcept { return index_; }
  std::exception_ptr cause() const noexcept { return cause_; }

 private:
  size_t index_;
  std::exception_ptr cause_;
};

namespace internal {
template <class T>
struct IsArgumentTuple : std::false_type {};
template <class... Ts>
struct IsArgumentTuple<std::tuple<Ts...>> : std::true_type {};
template <class A, class B>
struct IsArgumentTuple<std::pair<A, B>> : std::true_type {};

template <class Item>
ResultFuture ApplyItem(Client& client, std::string_view function, const Item& item) {
  if constexpr (IsArgumentTuple<std::decay_t<Item>>::value) {
    return std::apply([&](const auto&... args) { return client.apply(function, args...); },
                      item);
  } else {
    return client.apply(function, item);
  }
}

std::string MapFailure(std::string_view function, size_t index, std::exception_ptr cause);
}  // namespace internal

template <class Range>
std::vector<Result> Map(Client& client, std::string_view function, const Range& items,
                        const MapOptions& options = {}) {
  size_t total = 0;
  if constexpr (requires { items.size(); }) total = static_cast<size_t>(items.size());
  const size_t window = options.max_in_flight == 0 ? 1 : options.max_in_flight;
  std::vector<Result> results;
  if (total != 0) results.reserve(total);
  std::deque<ResultFuture> in_flight;
  std::exception_ptr failure;
  size_t failed_index = 0;
  // Takes the oldest answer; the first failure stops sending.
  auto take = [&] {
    Result r = in_flight.front().get();
    in_flight.pop_front();
    if (failure != nullptr) return;
    if (!r.ok()) {
      failure = r.error();
      failed_index = results.size();
      return;
    }
    results.push_back(std::move(r));
    if (options.progress) options.progress(results.size(), total);
  };
  for (const auto& item : items) {
    if (failure != nullptr) break;
    if (in_flight.size() >= window) take();
    if (failure != nullptr) break;
    in_flight.push_back(internal::ApplyItem(client, function, item));
  }
  while (!in_flight.empty()) take();
  if (failure != nullptr) {
    throw MapError(failed_index, failure, internal::MapFailure(function, failed_index, failure));
  }
  return results;
}

}  // namespace zerocan
