// Fuzz target: the capture reader and the inspector on arbitrary bytes.
//
// The input is read three ways: as a capture file (CaptureReader, every record then
// rendered by an Inspector as text and as JSON), and as a golden-vector .frames file
// (RecordFromFramesFile, then rendered). Nothing may crash, hang or leak; malformed
// input must come back as an end reason or a "MALFORMED" message. The limits are
// lowered so that the fuzzer explores structure rather than allocation.
//
// Built with libFuzzer under clang (-fsanitize=fuzzer), or linked with a small driver
// that replays a corpus directory as a plain test.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "zerocan/capture.h"
#include "tools/inspect_render.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);

  zerocan::CaptureLimits capture_limits;
  capture_limits.max_frames = 64;
  capture_limits.max_frame_bytes = 1 << 20;
  capture_limits.max_record_bytes = 4 << 20;

  zerocan::tools::InspectOptions text;
  text.limits.max_frames = 64;
  text.limits.max_depth = 32;
  zerocan::tools::InspectOptions json = text;
  json.json = true;
  json.full = true;

  auto reader = zerocan::CaptureReader::FromBytes(bytes, capture_limits);
  zerocan::tools::Inspector text_inspector(text);
  zerocan::tools::Inspector json_inspector(json);
  size_t out = 0;
  while (auto record = reader->Next()) {
    out += text_inspector.Render(*record).size();
    out += json_inspector.Render(*record).size();
  }
  out += text_inspector.Summary(reader.get()).size();

  std::string error;
  if (auto record = zerocan::RecordFromFramesFile(bytes, &error, capture_limits)) {
    zerocan::tools::Inspector vector_inspector(text);
    out += vector_inspector.Render(*record).size();
  }
  (void)out;
  return 0;
}
