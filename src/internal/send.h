// The one routine that hands a zerocan message to a socket; Send (frames.cc) and
// SendSigned (signing.cc) differ only in the trailing signature frame.
#pragma once

#include <optional>

#include <zmq.hpp>

#include "zerocan/frames.h"

namespace zerocan::internal {

// Sends [routing...] [] [envelope] [payload frames...] [trailer]? as one multipart
// message. Every frame is built before the first is sent, so a failure cannot leave half
// a message on the socket.
Tracker SendFrames(zmq::socket_t& socket, Outgoing&& message,
                   absl::InlinedVector<zmq::message_t, 2>* routing,
                   std::optional<zmq::message_t> trailer);

}  // namespace zerocan::internal
