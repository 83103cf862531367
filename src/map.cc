#include "zerocan/map.h"

#include "absl/strings/str_cat.h"

namespace zerocan::internal {

std::string MapFailure(std::string_view function, size_t index, std::exception_ptr cause) {
  std::string why = "unknown error";
  try {
    std::rethrow_exception(cause);
  } catch (const std::exception& e) {
    why = e.what();
  } catch (...) {
  }
  return absl::StrCat("map of ", std::string(function), ": item ", index, " failed: ", why);
}

}  // namespace zerocan::internal
