// Errors of apply calls: what a client sees when a call did not produce a value.
//
// RemoteError: the engine (or the broker on its behalf) answered with an error reply.
// It carries the remote details as data (type, message, function, where). TimeoutError:
// no reply came within the call's deadline; the client gave up and will drop a late
// reply. ArgumentError: an engine could not convert an argument to the parameter type
// of the function (sent back as a RemoteError of type "zerocan.ArgumentError").
#pragma once

#include <exception>
#include <string>

#include "zerocan/error.h"
#include "zerocan/writer.h"

namespace zerocan {

// Remote error types that zerocan itself produces (RemoteErrorInfo::type).
inline constexpr const char kErrorArgument[] = "zerocan.ArgumentError";
inline constexpr const char kErrorUnknownFunction[] = "zerocan.UnknownFunction";
inline constexpr const char kErrorDecode[] = "zerocan.DecodeError";
inline constexpr const char kErrorEngineLost[] = "zerocan.EngineLost";
inline constexpr const char kErrorFail[] = "zerocan.Fail";
// The engine is stopping (draining): it took no new call, or its grace period passed.
inline constexpr const char kErrorEngineStopping[] = "zerocan.EngineStopping";
// The broker is stopping: it takes no new calls, or its grace period passed.
inline constexpr const char kErrorBrokerStopping[] = "zerocan.BrokerStopping";
// A queue is full: the broker's of calls waiting for an engine (BrokerOptions::
// max_queued_*), or an engine's of calls waiting for a worker (EngineOptions::max_queued_*).
inline constexpr const char kErrorBusy[] = "zerocan.Busy";
// The client's connection to its broker (or engine) closed, or fell silent past the
// heartbeat timeout, while the call was in flight. Made by the client itself.
inline constexpr const char kErrorBrokerLost[] = "zerocan.BrokerLost";
// The name of a cancelled call's failure (CancelledError below), as Python's
// zerocan.CancelledError. Local: never sent, since a cancelled call gets no reply.
inline constexpr const char kErrorCancelled[] = "zerocan.CancelledError";

class RemoteError : public Error {
 public:
  explicit RemoteError(RemoteErrorInfo info);
  // "zerocan.EngineLost", "std::invalid_argument", "ValueError", ...
  const std::string& type() const noexcept { return info_.type; }
  // The remote message, without the decoration what() adds.
  const std::string& message() const noexcept { return info_.message; }
  const std::string& function() const noexcept { return info_.function; }
  // The engine id (or "broker ..."), as the remote side reported it.
  const std::string& where() const noexcept { return info_.where; }
  const RemoteErrorInfo& info() const noexcept { return info_; }

 private:
  RemoteErrorInfo info_;
};

// A RemoteError of type kErrorBrokerLost: the connection to the broker (or the engine the
// client calls directly) was lost while the call was in flight. The call may or may not
// have run.
class BrokerLost : public RemoteError {
 public:
  using RemoteError::RemoteError;
};

// A RemoteError of type kErrorBusy: a broker's or an engine's queue was full; nothing ran.
// Retry later.
class Busy : public RemoteError {
 public:
  using RemoteError::RemoteError;
};

// The exception for a remote error: BrokerLost or Busy for those types, else RemoteError.
std::exception_ptr MakeRemoteError(RemoteErrorInfo info);

// No reply within the call's deadline (zerocan.TimeoutError in Python, the same name).
class TimeoutError : public Error {
 public:
  using Error::Error;
};
// The call was cancelled (ResultFuture::Cancel, ResultStream::Cancel); inside an engine,
// what StreamWriter::Write throws once its call is cancelled.
class CancelledError : public Error {
 public:
  using Error::Error;
};
using CallTimeout [[deprecated("renamed zerocan::TimeoutError, as in Python")]] = TimeoutError;

// Thrown inside an engine when an argument does not convert; becomes a RemoteError of
// type kErrorArgument at the client.
class ArgumentError : public Error {
 public:
  using Error::Error;
};

}  // namespace zerocan
