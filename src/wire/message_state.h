// The shared state behind a decoded Message: the received frames, the envelope's words
// (in the frame, or an aligned copy) and the one generated reader over them. Payload
// Buffers alias this object (shared_from_this), so a payload view keeps every frame of
// its message alive.
#pragma once

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <absl/container/flat_hash_map.h>
#include <absl/strings/str_cat.h>
#include <capnp/any.h>
#include <capnp/serialize.h>

#include "zerocan/buffer.h"
#include "zerocan/error.h"
#include "zerocan/message.h"
#include "zerocan/shared.h"
#include "zerocan/wire/zerocan.capnp.h"

namespace zerocan::internal {

class MessageState : public std::enable_shared_from_this<MessageState> {
 public:
  explicit MessageState(ReceivedMessage&& received) : received_(std::move(received)) {}

  ReceivedMessage received_;
  // The envelope's words when they are not read in place from frame 0 (libzmq hands
  // out tcp/ipc frames at any address): in `short_copy_` when they fit (most calls and
  // results; no allocation), else in `aligned_copy_`. `copied_` says either was used.
  static constexpr size_t kShortCopyWords = 48;
  capnp::word* CopyEnvelope(const void* bytes, size_t word_count) {
    capnp::word* words = short_copy_;
    if (word_count > kShortCopyWords) {
      aligned_copy_.reset(new capnp::word[word_count]);
      words = aligned_copy_.get();
    }
    std::memcpy(words, bytes, word_count * sizeof(capnp::word));
    copied_ = true;
    return words;
  }
  bool copied_ = false;
  capnp::word short_copy_[kShortCopyWords];
  std::unique_ptr<capnp::word[]> aligned_copy_;
  // The reader the decoder's walk checked, kept for every accessor. Its traversal limit
  // is off (Cap'n Proto spends it cumulatively): the walk bounded the work instead.
  std::optional<capnp::FlatArrayMessageReader> reader_;
  wire::Envelope::Reader root_;
  // An apply's struct, function name and argument lists, as the decoder's walk followed
  // them (an engine asks for the name to route the call and for each argument).
  bool is_apply_ = false;
  wire::Apply::Reader apply_;
  std::string_view function_;
  capnp::List<wire::Value>::Reader args_;
  capnp::List<wire::Field>::Reader kwargs_;
  // A result's struct, as the walk followed it (a client asks it for several fields).
  bool is_result_ = false;
  wire::Result::Reader result_;
  wire::Value::Reader ok_;  // a successful result's value

  std::shared_ptr<const void> KeepAlive() const { return shared_from_this(); }

  // The bytes of each Payload.shared reference, mapped and bounds-checked by the
  // decoder's walk, keyed by where the reference lies in the envelope. Each view keeps
  // its arena mapped for as long as this message lives.
  absl::flat_hash_map<const void*, SharedOrigin> shared_views_;
  // Blocks of the receiver's own arena that this message's references may name: a
  // client's arguments, handed back in its result (Policy::shared_returns). Kept as
  // long as any view of the message.
  std::vector<Buffer> returned_blocks_;
  static const void* Key(wire::SharedRef::Reader ref) {
    return capnp::AnyStruct::Reader(ref).getDataSection().begin();
  }
  Buffer SharedSlice(wire::SharedRef::Reader ref) const {
    auto it = shared_views_.find(Key(ref));
    // Two references may share a location with different lengths (a crafted message):
    // the view must be the one checked for this reference's length.
    if (it != shared_views_.end() && it->second.view.size() != ref.getLength()) {
      throw Error("shared-memory reference: two references at one location disagree");
    }
    if (it == shared_views_.end()) {
      throw Error(absl::StrCat("a shared-memory reference (arena \"",
                               std::string(ref.getArena().begin(), ref.getArena().size()),
                               "\") that was not mapped: decoded without "
                               "DecodeLimits::SharedRefs::kMap"));
    }
    const Buffer& view = it->second.view;
    return Buffer(view.mutable_data(), view.size(), KeepAlive());
  }

  // Bytes [offset, offset+length) of payload frame `index` (1-based); already checked
  // by the decoder's walk.
  Buffer FrameSlice(uint32_t index, uint64_t offset, uint64_t length) const {
    return Buffer(received_.frames[index].mutable_data() + offset, length, KeepAlive());
  }
  Buffer InlineBytes(capnp::Data::Reader data) const {
    return Buffer(const_cast<std::byte*>(reinterpret_cast<const std::byte*>(data.begin())),
                  data.size(), KeepAlive());
  }
};

}  // namespace zerocan::internal
