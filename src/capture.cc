// Capture files (docs/CAPTURE.md): writer, bounded reader, live capture sockets.
#include "zerocan/capture.h"

#include <chrono>
#include <cstring>
#include <fstream>
#include <istream>
#include <ostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "zerocan/error.h"
#include "zerocan/version.h"

namespace zerocan {

namespace {

uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// Little-endian stores and loads, independent of the host's byte order.
void Put16(std::string* out, uint16_t v) {
  for (int i = 0; i < 2; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void Put32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void Put64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t Load(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

Buffer CopyFrame(const void* data, size_t size) {
  std::vector<std::byte> bytes(size);
  if (size != 0) std::memcpy(bytes.data(), data, size);
  return Buffer::Adopt(std::move(bytes));
}

}  // namespace

std::string DirectionName(Direction direction) {
  switch (direction) {
    case Direction::kUnknown: return "unknown";
    case Direction::kReceived: return "received";
    case Direction::kSent: return "sent";
    case Direction::kRequest: return "request";
    case Direction::kReply: return "reply";
  }
  return absl::StrCat("direction ", static_cast<int>(direction));
}

// ---- writer -------------------------------------------------------------------------

std::unique_ptr<CaptureWriter> CaptureWriter::Open(const std::string& path) {
  auto file = std::make_unique<std::ofstream>(path, std::ios::binary | std::ios::trunc);
  if (!*file) throw Error(absl::StrCat("cannot open capture file ", path, " for writing"));
  std::ostream* raw = file.get();
  auto writer = std::make_unique<CaptureWriter>(raw);
  writer->owned_ = std::move(file);
  return writer;
}

CaptureWriter::CaptureWriter(std::ostream* out) : out_(out) {
  std::string header(kCaptureMagic, sizeof(kCaptureMagic));
  Put16(&header, kCaptureFormatVersion);
  Put16(&header, kProtocolVersion);
  Put32(&header, kCaptureHeaderBytes);
  out_->write(header.data(), static_cast<std::streamsize>(header.size()));
  out_->flush();
  if (!*out_) throw Error("cannot write the capture header");
}

CaptureWriter::~CaptureWriter() {
  if (out_ != nullptr) out_->flush();
}

void CaptureWriter::WriteLocked(uint64_t time_ns, Direction direction, std::string_view source,
                                const std::vector<std::string_view>& frames) {
  if (source.size() > UINT16_MAX) source = source.substr(0, UINT16_MAX);
  if (frames.size() > UINT32_MAX) throw Error("capture record with more than 2^32 frames");
  std::string head(kCaptureRecordMagic, sizeof(kCaptureRecordMagic));
  Put32(&head, static_cast<uint32_t>(frames.size()));
  Put64(&head, time_ns == 0 ? NowNs() : time_ns);
  head.push_back(static_cast<char>(direction));
  head.push_back(0);  // flags, reserved
  Put16(&head, static_cast<uint16_t>(source.size()));
  Put32(&head, 0);    // reserved
  head.append(source);
  out_->write(head.data(), static_cast<std::streamsize>(head.size()));
  for (std::string_view frame : frames) {
    std::string length;
    Put64(&length, frame.size());
    out_->write(length.data(), 8);
    out_->write(frame.data(), static_cast<std::streamsize>(frame.size()));
  }
  if (!*out_) throw Error("writing a capture record failed (disk full?)");
  ++records_;
}

void CaptureWriter::Write(uint64_t time_ns, Direction direction, std::string_view source,
                          const std::vector<std::string_view>& frames) {
  std::lock_guard<std::mutex> lock(mu_);
  WriteLocked(time_ns, direction, source, frames);
}

void CaptureWriter::Write(const CaptureRecord& record) {
  std::vector<std::string_view> frames;
  frames.reserve(record.frames.size());
  for (const Buffer& b : record.frames) {
    frames.emplace_back(reinterpret_cast<const char*>(b.data()), b.size());
  }
  Write(record.time_ns, record.direction, record.source, frames);
}

void CaptureWriter::Write(const ReceivedMessage& message, Direction direction,
                          std::string_view source, uint64_t time_ns) {
  std::vector<std::string_view> frames;
  frames.reserve(message.routing.size() + 1 + message.frames.size());
  auto view = [](const Buffer& b) {
    return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
  };
  for (const Buffer& f : message.routing) frames.push_back(view(f));
  frames.emplace_back();
  for (const Buffer& f : message.frames) frames.push_back(view(f));
  Write(time_ns, direction, source, frames);
}

void CaptureWriter::Write(const Outgoing& message, Direction direction, std::string_view source,
                          uint64_t time_ns) {
  std::vector<std::string_view> frames;
  frames.reserve(2 + message.payload_frames().size());
  frames.emplace_back();
  frames.emplace_back(reinterpret_cast<const char*>(message.envelope().data()), message.envelope().size());
  for (const Buffer& b : message.payload_frames()) {
    frames.emplace_back(reinterpret_cast<const char*>(b.data()), b.size());
  }
  Write(time_ns, direction, source, frames);
}

void CaptureWriter::Flush() {
  std::lock_guard<std::mutex> lock(mu_);
  out_->flush();
}

uint64_t CaptureWriter::records_written() const {
  std::lock_guard<std::mutex> lock(mu_);
  return records_;
}

// ---- reader -------------------------------------------------------------------------

CaptureReader::CaptureReader(std::istream* in, const CaptureLimits& limits)
    : in_(in), limits_(limits) {
  // A seekable stream tells us how many bytes remain, so a length past the end is
  // reported as truncation before anything is allocated.
  std::streampos start = in_->tellg();
  if (start != std::streampos(-1) && in_->seekg(0, std::ios::end)) {
    std::streampos end = in_->tellg();
    if (end != std::streampos(-1) && end >= start) {
      file_size_ = static_cast<uint64_t>(end - start);
    }
    in_->seekg(start);
  }
  in_->clear();

  unsigned char h[kCaptureHeaderBytes];
  if (!ReadExact(h, sizeof(h))) {
    if (offset_ == 0) {
      Stop(End::kTruncated, 0, "empty file: no capture header");
    } else {
      Stop(End::kTruncated, 0,
           absl::StrCat("file ends inside the capture header (", offset_, " of ",
                        kCaptureHeaderBytes, " bytes)"));
    }
    return;
  }
  if (std::memcmp(h, kCaptureMagic, sizeof(kCaptureMagic)) != 0) {
    Stop(End::kCorrupt, 0, "not a zerocan capture (bad magic; expected \"ZCANCAP\\0\")");
    return;
  }
  header_.format_version = static_cast<uint16_t>(Load(h + 8, 2));
  header_.protocol_version = static_cast<uint16_t>(Load(h + 10, 2));
  uint64_t header_length = Load(h + 12, 4);
  if (header_.format_version != kCaptureFormatVersion) {
    Stop(End::kCorrupt, 8,
         absl::StrCat("capture format version ", header_.format_version,
                      " is not supported (this reader reads ", kCaptureFormatVersion, ")"));
    return;
  }
  if (header_length < kCaptureHeaderBytes || header_length > 65536) {
    Stop(End::kCorrupt, 12, absl::StrCat("capture header length ", header_length, " is invalid"));
    return;
  }
  // Later header fields (a newer writer's) are skipped.
  for (uint64_t skip = header_length - kCaptureHeaderBytes; skip > 0;) {
    unsigned char buf[256];
    size_t n = skip < sizeof(buf) ? static_cast<size_t>(skip) : sizeof(buf);
    if (!ReadExact(buf, n)) {
      Stop(End::kTruncated, 0, "file ends inside the capture header");
      return;
    }
    skip -= n;
  }
}

std::unique_ptr<CaptureReader> CaptureReader::FromBytes(std::string_view bytes,
                                                        const CaptureLimits& limits) {
  auto stream = std::make_unique<std::istringstream>(std::string(bytes), std::ios::binary);
  std::istream* raw = stream.get();
  auto reader = std::make_unique<CaptureReader>(raw, limits);
  reader->owned_ = std::move(stream);
  return reader;
}

CaptureReader::~CaptureReader() = default;

bool CaptureReader::ReadExact(void* out, size_t size) {
  if (size == 0) return true;
  in_->read(static_cast<char*>(out), static_cast<std::streamsize>(size));
  auto got = static_cast<uint64_t>(in_->gcount());
  offset_ += got;
  return got == size;
}

bool CaptureReader::ReadFrame(uint64_t size, Buffer* out) {
  // Grow in steps so a garbage length on an unseekable stream (stdin) costs at most
  // what the stream really holds plus one step, not the length it claims.
  constexpr uint64_t kStep = uint64_t{16} << 20;
  std::vector<std::byte> bytes;
  uint64_t done = 0;
  while (done < size) {
    uint64_t n = size - done < kStep ? size - done : kStep;
    bytes.resize(static_cast<size_t>(done + n));
    if (!ReadExact(bytes.data() + done, static_cast<size_t>(n))) return false;
    done += n;
  }
  *out = Buffer::Adopt(std::move(bytes));
  return true;
}

void CaptureReader::Stop(End end, uint64_t offset, std::string reason) {
  end_ = end;
  end_offset_ = offset;
  end_reason_ = std::move(reason);
}

std::optional<CaptureRecord> CaptureReader::Next() {
  if (end_ != End::kNotYet) return std::nullopt;
  uint64_t start = offset_;
  unsigned char h[kCaptureRecordHeaderBytes];
  if (!ReadExact(h, sizeof(h))) {
    if (offset_ == start) {
      Stop(End::kClean, start,
           absl::StrCat("end of file after ", records_, " record", records_ == 1 ? "" : "s",
                        " at offset ", start));
    } else {
      Stop(End::kTruncated, start,
           absl::StrCat("truncated: record ", records_ + 1, " at offset ", start,
                        " ends inside its header (", offset_ - start, " of ",
                        kCaptureRecordHeaderBytes, " bytes)"));
    }
    return std::nullopt;
  }
  auto corrupt = [&](std::string what) {
    Stop(End::kCorrupt, start,
         absl::StrCat("corrupt: record ", records_ + 1, " at offset ", start, ": ", what));
    return std::nullopt;
  };
  if (std::memcmp(h, kCaptureRecordMagic, sizeof(kCaptureRecordMagic)) != 0) {
    return corrupt("no record marker \"ZREC\" (garbage or a damaged file)");
  }
  CaptureRecord record;
  record.offset = start;
  uint64_t frame_count = Load(h + 4, 4);
  record.time_ns = Load(h + 8, 8);
  record.direction = static_cast<Direction>(h[16]);
  uint64_t source_length = Load(h + 18, 2);
  if (frame_count > limits_.max_frames) {
    return corrupt(absl::StrCat(frame_count, " frames exceeds max_frames ", limits_.max_frames));
  }
  if (source_length > limits_.max_source_bytes) {
    return corrupt(absl::StrCat("source tag of ", source_length, " bytes exceeds max_source_bytes ",
                                limits_.max_source_bytes));
  }
  auto remaining = [&]() -> std::optional<uint64_t> {
    if (!file_size_ || *file_size_ < offset_) return std::nullopt;
    return *file_size_ - offset_;
  };
  auto truncated = [&](std::string what) {
    Stop(End::kTruncated, start,
         absl::StrCat("truncated: record ", records_ + 1, " at offset ", start, ": ", what,
                      "; the file ends at offset ", offset_));
    return std::nullopt;
  };
  record.source.resize(static_cast<size_t>(source_length));
  if (!ReadExact(record.source.data(), record.source.size())) {
    return truncated("file ends inside the source tag");
  }
  uint64_t total = 0;
  record.frames.reserve(static_cast<size_t>(frame_count));
  for (uint64_t i = 0; i < frame_count; ++i) {
    unsigned char len[8];
    if (!ReadExact(len, 8)) {
      return truncated(
          absl::StrCat("file ends before frame ", i, " (frames 0..", frame_count - 1, ")"));
    }
    uint64_t size = Load(len, 8);
    if (size > limits_.max_frame_bytes) {
      return corrupt(absl::StrCat("frame ", i, " claims ", size, " bytes; max_frame_bytes is ",
                                  limits_.max_frame_bytes));
    }
    if (size > limits_.max_record_bytes - total) {
      return corrupt(absl::StrCat("frames exceed max_record_bytes ", limits_.max_record_bytes));
    }
    total += size;
    if (auto left = remaining(); left && size > *left) {
      // Nothing is read or allocated; the message still names where the file ends.
      offset_ += *left;
      return truncated(absl::StrCat("frame ", i, " (frames 0..", frame_count - 1, ") needs ",
                                    size, " bytes, ", *left, " remain"));
    }
    Buffer frame;
    if (!ReadFrame(size, &frame)) {
      return truncated(absl::StrCat("file ends inside frame ", i, " (frames 0..",
                                    frame_count - 1, ", this one ", size, " bytes)"));
    }
    record.frames.push_back(std::move(frame));
  }
  ++records_;
  return record;
}

// ---- live capture sockets ---------------------------------------------------------------

std::string CaptureTag(Direction direction, uint64_t time_ns, std::string_view source) {
  std::string tag(kCaptureTagMagic, sizeof(kCaptureTagMagic));
  tag.push_back(static_cast<char>(direction));
  Put64(&tag, time_ns == 0 ? NowNs() : time_ns);
  tag.append(source.substr(0, UINT16_MAX));
  return tag;
}

CaptureRecord RecordFromCaptureFrames(std::span<const Buffer> frames) {
  CaptureRecord record;
  size_t first = 0;
  if (!frames.empty() && frames[0].size() >= sizeof(kCaptureTagMagic) + 9 &&
      std::memcmp(frames[0].data(), kCaptureTagMagic, sizeof(kCaptureTagMagic)) == 0) {
    const auto* p = reinterpret_cast<const unsigned char*>(frames[0].data());
    record.direction = static_cast<Direction>(p[8]);
    record.time_ns = Load(p + 9, 8);
    record.source.assign(reinterpret_cast<const char*>(p + 17), frames[0].size() - 17);
    first = 1;
  } else {
    record.time_ns = NowNs();
  }
  record.frames.assign(frames.begin() + first, frames.end());
  return record;
}

std::optional<CaptureRecord> RecordFromFramesFile(std::string_view bytes, std::string* error,
                                                  const CaptureLimits& limits) {
  CaptureRecord record;
  record.frames.push_back(Buffer());  // the delimiter the file leaves out
  size_t at = 0;
  while (at < bytes.size()) {
    if (bytes.size() - at < 8) {
      *error = absl::StrCat("truncated: ", bytes.size() - at, " bytes at offset ", at,
                            " are too few for a frame length");
      return std::nullopt;
    }
    uint64_t size = Load(reinterpret_cast<const unsigned char*>(bytes.data() + at), 8);
    at += 8;
    if (size > limits.max_frame_bytes || size > bytes.size() - at) {
      *error = absl::StrCat("frame ", record.frames.size() - 1, " at offset ", at - 8, " claims ",
                            size, " bytes; ", bytes.size() - at, " remain");
      return std::nullopt;
    }
    if (record.frames.size() > limits.max_frames) {
      *error = absl::StrCat("more than max_frames ", limits.max_frames, " frames");
      return std::nullopt;
    }
    record.frames.push_back(CopyFrame(bytes.data() + at, static_cast<size_t>(size)));
    at += static_cast<size_t>(size);
  }
  return record;
}

// ---- decoding helpers -------------------------------------------------------------------

FrameSplit SplitFrames(const CaptureRecord& record) {
  FrameSplit split;
  for (size_t i = 0; i < record.frames.size(); ++i) {
    if (record.frames[i].empty()) {
      split.routing = i;
      split.has_delimiter = true;
      split.first_message_frame = i + 1;
      return split;
    }
  }
  return split;
}

ReceivedMessage ToReceived(const CaptureRecord& record, size_t drop_last) {
  FrameSplit split = SplitFrames(record);
  ReceivedMessage out;
  for (size_t i = 0; i < split.routing; ++i) out.routing.push_back(record.frames[i]);
  size_t end = record.frames.size();
  end = drop_last > end - split.first_message_frame ? split.first_message_frame : end - drop_last;
  for (size_t i = split.first_message_frame; i < end; ++i) {
    out.frames.push_back(record.frames[i]);
  }
  return out;
}

}  // namespace zerocan
