// `zerocan inspect` (captures, a live capture socket, the schema) and `zerocan record`.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <zmq.hpp>

#include "tools/commands.h"
#include "zerocan/capture.h"
#include "zerocan/error.h"
#include "zerocan/inspect.h"
#include "zerocan/version.h"

#if __has_include("zerocan/signing.h")
#include "zerocan/signing.h"
#define ZEROCAN_TOOL_SIGNING 1
#endif

namespace zerocan::tools {

namespace {

volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

constexpr const char* kInspectUsage =
    "usage: zerocan inspect FILE|-|VECTOR.frames [--json] [--full] [--function NAME] [--id ID]\n"
    "                       [--key-file F]\n"
    "       zerocan inspect --follow URL [--count N] [same options]\n"
    "       zerocan inspect --schema [--json]\n"
    "\n"
    "Shows every message of a capture (zerocan record, zerocan broker --capture-file, or\n"
    "zerocan::CaptureWriter): its frame table, its envelope as Cap'n Proto text and a\n"
    "summary of each payload. Malformed messages are reported with the reason and field\n"
    "path, and inspection goes on.\n"
    "  --json           one JSON object per message, one per line\n"
    "  --full           every value and byte instead of the first few\n"
    "  --function NAME  only applies of NAME and the results that answer them\n"
    "  --id ID          only the message with messageId ID and results for it\n"
    "  --key-file F     check signatures with the key in F\n"
    "  --follow URL     read a live capture socket (a broker's --capture URL)\n"
    "  --count N        with --follow: stop after N messages\n"
    "  --schema         print the schema in use (structs, fields, ordinals, ids)\n"
    "Exit status: 0, or 1 when the capture file is truncated or damaged, 2 on usage.\n";

constexpr const char* kRecordUsage =
    "usage: zerocan record URL FILE [--count N]\n"
    "Subscribes to a capture socket (a broker's --capture URL) and writes every message to\n"
    "FILE (a capture; read it with zerocan inspect) until interrupted or N messages.\n";

bool ParseU64(const char* text, uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(text, &end, 0);
  if (errno != 0 || end == text || *end != '\0' || text[0] == '-') return false;
  *out = v;
  return true;
}

void Emit(const std::string& text) {
  if (text.empty()) return;
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

}  // namespace

int RunInspect(int argc, char** argv) {
  InspectOptions options;
  std::string file, follow, key_file;
  bool schema = false;
  uint64_t count = 0;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "zerocan inspect: %s needs a value\n%s", name, kInspectUsage);
        return nullptr;
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kInspectUsage, stdout);
      return 0;
    } else if (a == "--json") {
      options.json = true;
    } else if (a == "--full") {
      options.full = true;
    } else if (a == "--schema") {
      schema = true;
    } else if (a == "--function") {
      const char* v = value("--function");
      if (v == nullptr) return 2;
      options.function = v;
    } else if (a == "--id") {
      const char* v = value("--id");
      uint64_t id;
      if (v == nullptr) return 2;
      if (!ParseU64(v, &id)) {
        std::fprintf(stderr, "zerocan inspect: --id wants a message id, got \"%s\"\n", v);
        return 2;
      }
      options.id = id;
    } else if (a == "--count") {
      const char* v = value("--count");
      if (v == nullptr) return 2;
      if (!ParseU64(v, &count)) {
        std::fprintf(stderr, "zerocan inspect: --count wants a number, got \"%s\"\n", v);
        return 2;
      }
    } else if (a == "--key-file") {
      const char* v = value("--key-file");
      if (v == nullptr) return 2;
      key_file = v;
    } else if (a == "--follow") {
      const char* v = value("--follow");
      if (v == nullptr) return 2;
      follow = v;
    } else if (a.size() > 1 && a[0] == '-' && a != "-") {
      std::fprintf(stderr, "zerocan inspect: unknown option %s\n%s", argv[i], kInspectUsage);
      return 2;
    } else if (file.empty()) {
      file = argv[i];
    } else {
      std::fprintf(stderr, "zerocan inspect: one FILE only\n%s", kInspectUsage);
      return 2;
    }
  }
  if (schema) {
    Emit(DescribeSchema(options.json));
    return 0;
  }
  if (file.empty() == follow.empty()) {
    std::fprintf(stderr, "zerocan inspect: give a FILE (or -) or --follow URL\n%s",
                 kInspectUsage);
    return 2;
  }

#ifdef ZEROCAN_TOOL_SIGNING
  std::optional<Signer> signer;
#endif
  if (!key_file.empty()) {
#ifdef ZEROCAN_TOOL_SIGNING
    try {
      signer.emplace(Signer::FromKeyFile(key_file));
    } catch (const Error& e) {
      std::fprintf(stderr, "zerocan inspect: %s\n", e.what());
      return 2;
    }
    options.signer = &*signer;
#else
    std::fprintf(stderr, "zerocan inspect: --key-file: this build has no signing support\n");
    return 2;
#endif
  }

  Inspector inspector(options);
  // Summaries go to stderr with --json so that stdout stays one object per line.
  FILE* summary_out = options.json ? stderr : stdout;

  if (!follow.empty()) {
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    try {
      zmq::context_t context;
      zmq::socket_t sub(context, zmq::socket_type::sub);
      sub.set(zmq::sockopt::subscribe, "");
      sub.connect(follow);
      while (!g_stop && (count == 0 || inspector.seen() < count)) {
        std::optional<CaptureRecord> record;
        try {
          record = ReceiveCaptured(sub, 200);
        } catch (const TransportError&) {
          if (g_stop) break;
          throw;
        }
        if (record) Emit(inspector.Render(*record));
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "zerocan inspect: %s\n", e.what());
      return 1;
    }
    std::string summary = inspector.Summary(nullptr);
    std::fputs(summary.c_str(), summary_out);
    return 0;
  }

  if (file.size() > 7 && file.compare(file.size() - 7, 7, ".frames") == 0) {
    // A golden vector (tests/vectors/README.md): one message's frames, no capture header.
    std::ifstream vector_file(file, std::ios::binary);
    if (!vector_file) {
      std::fprintf(stderr, "zerocan inspect: cannot open %s\n", file.c_str());
      return 2;
    }
    std::string bytes((std::istreambuf_iterator<char>(vector_file)), std::istreambuf_iterator<char>());
    std::string error;
    std::optional<CaptureRecord> record = RecordFromFramesFile(bytes, &error);
    if (!record) {
      std::fprintf(stderr, "zerocan inspect: %s: %s\n", file.c_str(), error.c_str());
      return 1;
    }
    Emit(inspector.Render(*record));
    std::string summary = inspector.Summary(nullptr);
    std::fputs(summary.c_str(), summary_out);
    return 0;
  }

  std::ifstream in_file;
  std::istream* in = &std::cin;
  if (file != "-") {
    in_file.open(file, std::ios::binary);
    if (!in_file) {
      std::fprintf(stderr, "zerocan inspect: cannot open %s\n", file.c_str());
      return 2;
    }
    in = &in_file;
  }
  CaptureReader reader(in);
  if (!options.json && reader.end() == CaptureReader::End::kNotYet &&
      reader.header().protocol_version != kProtocolVersion) {
    std::printf("note: captured with protocol version %u; this program speaks %u\n",
                reader.header().protocol_version, kProtocolVersion);
  }
  while (auto record = reader.Next()) Emit(inspector.Render(*record));
  std::string summary = inspector.Summary(&reader);
  std::fputs(summary.c_str(), summary_out);
  bool damaged = reader.end() == CaptureReader::End::kTruncated ||
                 reader.end() == CaptureReader::End::kCorrupt;
  return damaged ? 1 : 0;
}

int RunRecord(int argc, char** argv) {
  std::string url, file;
  uint64_t count = 0;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kRecordUsage, stdout);
      return 0;
    } else if (a == "--count" && i + 1 < argc) {
      if (!ParseU64(argv[++i], &count)) {
        std::fprintf(stderr, "zerocan record: --count wants a number\n");
        return 2;
      }
    } else if (a.size() > 1 && a[0] == '-') {
      std::fprintf(stderr, "zerocan record: unknown option %s\n%s", argv[i], kRecordUsage);
      return 2;
    } else if (url.empty()) {
      url = argv[i];
    } else if (file.empty()) {
      file = argv[i];
    } else {
      std::fputs(kRecordUsage, stderr);
      return 2;
    }
  }
  if (url.empty() || file.empty()) {
    std::fputs(kRecordUsage, stderr);
    return 2;
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  try {
    auto writer = CaptureWriter::Open(file);
    zmq::context_t context;
    zmq::socket_t sub(context, zmq::socket_type::sub);
    sub.set(zmq::sockopt::subscribe, "");
    sub.connect(url);
    std::fprintf(stderr, "zerocan record: recording %s to %s (Ctrl-C to stop)\n", url.c_str(),
                 file.c_str());
    while (!g_stop && (count == 0 || writer->records_written() < count)) {
      std::optional<CaptureRecord> record;
      try {
        record = ReceiveCaptured(sub, 200);
      } catch (const TransportError&) {
        if (g_stop) break;
        throw;
      }
      if (!record) continue;
      writer->Write(*record);
      writer->Flush();  // a concurrent `zerocan inspect` sees whole records
    }
    std::fprintf(stderr, "zerocan record: %llu messages written to %s\n",
                 static_cast<unsigned long long>(writer->records_written()), file.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan record: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace zerocan::tools
