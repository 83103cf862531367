#include "zerocan/registry.h"

#include "absl/strings/str_cat.h"

namespace zerocan {

void Registry::Add(Entry entry) {
  if (entry.name.empty()) throw EncodeError("Registry: a codec needs a non-empty wire name");
  if (by_name_.contains(entry.name)) {
    throw EncodeError(absl::StrCat("Registry: wire name \"", entry.name, "\" is already registered"));
  }
  if (by_type_.contains(entry.type)) {
    throw EncodeError(absl::StrCat("Registry: C++ type ", entry.type.name(),
                                   " is already registered as \"",
                                   by_type_.at(entry.type)->name, "\""));
  }
  auto shared = std::make_shared<const Entry>(std::move(entry));
  by_type_.emplace(shared->type, shared);
  by_name_.emplace(shared->name, std::move(shared));
}

const Registry::Entry* Registry::FindType(std::type_index type) const noexcept {
  auto it = by_type_.find(type);
  return it == by_type_.end() ? nullptr : it->second.get();
}

const Registry::Entry* Registry::FindName(std::string_view name) const noexcept {
  auto it = by_name_.find(absl::string_view(name.data(), name.size()));
  return it == by_name_.end() ? nullptr : it->second.get();
}

Registry& Registry::Default() {
  static Registry registry;
  return registry;
}

}  // namespace zerocan
