// The exception types of remote errors (zerocan/remote_error.h).
#include "zerocan/remote_error.h"

#include <string_view>

namespace zerocan {

std::exception_ptr MakeRemoteError(RemoteErrorInfo info) {
  std::string_view type = info.type;
  if (type == kErrorBusy) return std::make_exception_ptr(Busy(std::move(info)));
  if (type == kErrorBrokerLost) return std::make_exception_ptr(BrokerLost(std::move(info)));
  return std::make_exception_ptr(RemoteError(std::move(info)));
}

}  // namespace zerocan
