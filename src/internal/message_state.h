// The shared state behind a decoded Message: the received frames, the envelope's words
// (in the frame, or an aligned copy), the checked views over them, and the
// generated reader built on first use. Payload Buffers alias this object
// (shared_from_this), so a payload view keeps every frame of its message alive.
#pragma once

#include <memory>
#include <mutex>
#include <optional>

#include <capnp/serialize.h>

#include "zerocan/buffer.h"
#include "zerocan/internal/wire_view.h"
#include "zerocan/message.h"

namespace zerocan::internal {

class MessageState : public std::enable_shared_from_this<MessageState> {
 public:
  explicit MessageState(ReceivedMessage&& received) : received_(std::move(received)) {}

  ReceivedMessage received_;
  // Owns the envelope's words when they are not read in place from frame 0.
  std::unique_ptr<capnp::word[]> aligned_copy_;
  // The words the views read, and their segment table. Views point into segments_,
  // so a MessageState never moves (it lives behind a shared_ptr).
  kj::ArrayPtr<const capnp::word> words_;
  Segments segments_;
  EnvelopeView envelope_;
  // For an apply, its function and argument lists (read once by Message::Decode; the
  // Message's inline accessors read them through Message::apply_).
  ApplyIndex apply_index_;

  // The generated reader over the same words, built on the first Message::envelope()
  // call (most messages never need it). Thread-safe through the once flag.
  wire::Envelope::Reader GeneratedRoot() const;

  std::shared_ptr<const void> KeepAlive() const { return shared_from_this(); }

  // Bytes [offset, offset+length) of payload frame `index` (1-based); already checked
  // by the decoder's walk.
  Buffer FrameSlice(uint32_t index, uint64_t offset, uint64_t length) const {
    auto& frame = const_cast<zmq::message_t&>(received_.frames[index]);
    return Buffer(static_cast<std::byte*>(frame.data()) + offset, length, KeepAlive());
  }
  Buffer InlineBytes(BlobView data) const {
    return Buffer(const_cast<std::byte*>(reinterpret_cast<const std::byte*>(data.begin())),
                  data.size(), KeepAlive());
  }

 private:
  mutable std::once_flag reader_once_;
  mutable std::optional<capnp::FlatArrayMessageReader> reader_;
  mutable wire::Envelope::Reader root_;
};

}  // namespace zerocan::internal
