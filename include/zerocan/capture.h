// Message captures: a file of whole multipart messages, for `zerocan inspect`, for
// tests, and for users who want to record their own sockets.
//
// Format (docs/CAPTURE.md): a 16-byte header (magic "ZCANCAP\0", capture format
// version, protocol version, header length), then one record per multipart message:
// a 24-byte record header ("ZREC", frame count, time in ns, direction, source length),
// the source tag, then each frame as a u64 length and its bytes. Little-endian, no
// padding. Every frame of the message is kept as it was on the wire: routing
// identities, the empty delimiter, the envelope, payload frames, a signature.
//
// The reader treats the file as untrusted: every count and length is checked against
// CaptureLimits and against the bytes that remain before anything is allocated, and a
// damaged file ends the iteration with the offset and reason instead of throwing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zerocan/buffer.h"
#include "zerocan/message.h"
#include "zerocan/writer.h"

namespace zerocan {

inline constexpr char kCaptureMagic[8] = {'Z', 'C', 'A', 'N', 'C', 'A', 'P', '\0'};
inline constexpr char kCaptureRecordMagic[4] = {'Z', 'R', 'E', 'C'};
// Version of the capture container itself (not of the envelope it holds).
inline constexpr uint16_t kCaptureFormatVersion = 1;
inline constexpr size_t kCaptureHeaderBytes = 16;
inline constexpr size_t kCaptureRecordHeaderBytes = 24;
// First bytes of the optional tag frame a live capture socket may put before each
// message (see PublishCaptured): "ZCAPTAG" then a version byte.
inline constexpr char kCaptureTagMagic[8] = {'Z', 'C', 'A', 'P', 'T', 'A', 'G', '\1'};

// Who saw the message going which way. Stored as one byte; unknown values read back
// as themselves (DirectionName prints them as numbers).
enum class Direction : uint8_t {
  kUnknown = 0,
  kReceived = 1,  // received by the capturing program
  kSent = 2,      // sent by the capturing program
  kRequest = 3,   // a broker saw it travelling from a client towards an engine
  kReply = 4,     // a broker saw it travelling from an engine towards a client
};
// "unknown", "received", "sent", "request", "reply", or "direction N".
std::string DirectionName(Direction direction);

struct CaptureHeader {
  uint16_t format_version = kCaptureFormatVersion;
  uint16_t protocol_version = 0;  // the writer's kProtocolVersion
};

// One captured multipart message. Frames are owned copies (8-byte aligned heap blocks),
// safe to keep after the reader is gone.
struct CaptureRecord {
  uint64_t offset = 0;   // byte offset of the record in the file (0 when not from a file)
  uint64_t time_ns = 0;  // nanoseconds since the Unix epoch
  Direction direction = Direction::kUnknown;
  std::string source;    // free text: a socket name, endpoint or peer ("frontend")
  std::vector<Buffer> frames;
};

// Bounds the reader enforces on untrusted capture files.
struct CaptureLimits {
  // Frames of one record: a message's frames plus its routing frames and delimiter.
  uint32_t max_frames = 4096 + 16 + 1;
  uint64_t max_frame_bytes = uint64_t{2} << 30;
  uint64_t max_record_bytes = uint64_t{4} << 30;
  uint32_t max_source_bytes = 4096;
};

// Writes a capture: the header at construction, then one record per Write call.
// Write is internally serialised (one mutex), so several threads may share a writer;
// each record is written whole. Errors (a full disk) throw zerocan::Error.
class CaptureWriter {
 public:
  // Creates or truncates `path`. Throws Error if it cannot be opened.
  static std::unique_ptr<CaptureWriter> Open(const std::string& path);
  // Writes to `out`, which the caller owns and keeps alive while the writer lives.
  explicit CaptureWriter(std::ostream* out);
  ~CaptureWriter();
  CaptureWriter(const CaptureWriter&) = delete;
  CaptureWriter& operator=(const CaptureWriter&) = delete;

  // One record of raw frames, exactly as given (`record.offset` is ignored).
  void Write(const CaptureRecord& record);
  void Write(uint64_t time_ns, Direction direction, std::string_view source,
             const std::vector<std::string_view>& frames);
  // A received message: its routing frames, the empty delimiter, then its frames.
  // time_ns 0 = now.
  void Write(const ReceivedMessage& message, Direction direction = Direction::kReceived,
             std::string_view source = {}, uint64_t time_ns = 0);
  // A message about to be sent (before Send consumes it): the empty delimiter, the
  // envelope and the payload frames, as a DEALER puts them on the wire. Copies the
  // bytes into the file; the Outgoing is not changed.
  void Write(const Outgoing& message, Direction direction = Direction::kSent,
             std::string_view source = {}, uint64_t time_ns = 0);
  void Flush();
  uint64_t records_written() const;

 private:
  void WriteLocked(uint64_t time_ns, Direction direction, std::string_view source,
                   const std::vector<std::string_view>& frames);

  std::unique_ptr<std::ostream> owned_;
  std::ostream* out_;
  mutable std::mutex mu_;
  uint64_t records_ = 0;
};

// Reads a capture sequentially. Never throws for bad input: Next() returns nullopt at
// the end, and end() / end_reason() / end_offset() say whether the file ended cleanly,
// and if not, where and why (truncated record, garbage, a limit).
class CaptureReader {
 public:
  enum class End {
    kNotYet,     // more records may follow
    kClean,      // end of file exactly after a record
    kTruncated,  // the file stops inside the header or a record
    kCorrupt,    // bytes that are not a capture (bad magic, a length past a limit...)
  };

  // Reads from `in` (owned by the caller, alive while the reader is used). The header
  // is read here; a bad header shows up as end() != kNotYet.
  explicit CaptureReader(std::istream* in, const CaptureLimits& limits = {});
  // Reads from memory (copied into an internal stream).
  static std::unique_ptr<CaptureReader> FromBytes(std::string_view bytes,
                                                  const CaptureLimits& limits = {});
  ~CaptureReader();

  const CaptureHeader& header() const noexcept { return header_; }
  std::optional<CaptureRecord> Next();

  End end() const noexcept { return end_; }
  // Human-readable: "end of file after 12 records at offset 4096" or the problem.
  const std::string& end_reason() const noexcept { return end_reason_; }
  // Offset where reading stopped (the start of the damaged record when damaged).
  uint64_t end_offset() const noexcept { return end_offset_; }
  uint64_t records_read() const noexcept { return records_; }

 private:
  bool ReadExact(void* out, size_t size);
  bool ReadFrame(uint64_t size, Buffer* out);
  void Stop(End end, uint64_t offset, std::string reason);

  std::unique_ptr<std::istream> owned_;
  std::istream* in_;
  CaptureLimits limits_;
  CaptureHeader header_;
  uint64_t offset_ = 0;
  std::optional<uint64_t> file_size_;  // when the stream is seekable
  End end_ = End::kNotYet;
  std::string end_reason_;
  uint64_t end_offset_ = 0;
  uint64_t records_ = 0;
};

// ---- live capture sockets --------------------------------------------------------------
//
// A live capture publisher (PublishCaptured, zerocan/transport/zmq.h) may put a tag frame
// before each message: kCaptureTagMagic, u8 direction, u64 time ns (LE), then the source
// text (at most 65535 bytes).

// The tag frame's bytes; time_ns 0 means now.
std::string CaptureTag(Direction direction, uint64_t time_ns, std::string_view source);

// Turns the frames of one captured multipart message into a record: a leading tag frame
// (if any) sets direction, time and source; otherwise time is now and the direction
// unknown. The frames are shared, not copied.
CaptureRecord RecordFromCaptureFrames(std::span<const Buffer> frames);

// Golden vector files (tests/vectors/README.md): the frames after the delimiter, each a
// u64 little-endian length and its bytes, nothing else. Returns a record of an empty
// delimiter and those frames (time 0, direction unknown), or nullopt with `error` set
// when the bytes are not such a file (a length past the end, more than
// limits.max_frames frames, a frame over limits.max_frame_bytes).
std::optional<CaptureRecord> RecordFromFramesFile(std::string_view bytes, std::string* error,
                                                  const CaptureLimits& limits = {});

// Decoding helpers shared by inspect and the tools.

// Splits a record's frames as a zerocan receiver would: frames before the first empty
// frame are routing frames, that frame is the delimiter, the rest the message. A record
// without an empty frame is taken as a message without routing or delimiter.
struct FrameSplit {
  size_t routing = 0;         // number of routing frames
  bool has_delimiter = false;
  size_t first_message_frame = 0;  // index of the envelope in record.frames
};
FrameSplit SplitFrames(const CaptureRecord& record);

// The message part of a record as a ReceivedMessage whose frames share the record's
// buffers (no copy; the Buffers stay alive while the frames do). `drop_last` leaves out
// trailing frames (a signature).
ReceivedMessage ToReceived(const CaptureRecord& record, size_t drop_last = 0);

}  // namespace zerocan
