// `zerocan inspect` (captures, a live capture socket, the schema) and `zerocan record`.
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
#include "tools/inspect_render.h"
#include "zerocan/capture.h"
#include "zerocan/transport/zmq.h"
#include "zerocan/error.h"
#include "zerocan/version.h"

#if __has_include("zerocan/signing.h")
#include "zerocan/signing.h"
#define ZEROCAN_TOOL_SIGNING 1
#endif

namespace zerocan::tools {

namespace {

volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

void Emit(const std::string& text) {
  if (text.empty()) return;
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

struct InspectArgs {
  InspectOptions options;
  std::string file, follow, key_file;
  bool schema = false;
  uint64_t count = 0;
};

int RunInspect(InspectArgs& args) {
  InspectOptions& options = args.options;
  const std::string& file = args.file;
  const std::string& follow = args.follow;
  const std::string& key_file = args.key_file;
  const bool schema = args.schema;
  const uint64_t count = args.count;
  if (schema) {
    Emit(DescribeSchema(options.json));
    return 0;
  }
  if (file.empty() == follow.empty()) {
    std::fprintf(stderr, "zerocan inspect: give a FILE (or -) or --follow URL\n"
                         "Run `zerocan inspect --help` for the options.\n");
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

int RunRecord(const std::string& url, const std::string& file, uint64_t count) {
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

}  // namespace

void AddInspect(CLI::App& app, RunFunction* chosen) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* sub = app.add_subcommand("inspect", "show the frames and envelope of captured messages");
  sub->description(
      "show the frames and envelope of captured messages\n"
      "\n"
      "  zerocan inspect FILE|-|VECTOR.frames [options]\n"
      "  zerocan inspect --follow URL [--count N] [options]\n"
      "  zerocan inspect --schema [--json]\n"
      "\n"
      "Shows every message of a capture (zerocan record, zerocan broker --capture-file, or\n"
      "zerocan::CaptureWriter): its frame table, its envelope as Cap'n Proto text and a\n"
      "summary of each payload. Malformed messages are reported with the reason and field\n"
      "path, and inspection goes on.");
  sub->footer(
      "Exit status: 0, or 1 when the capture file is truncated or damaged, 2 on usage (a FILE\n"
      "that is missing, unreadable or a directory included).");
  sub->add_option("FILE", args->file, "a capture file, - for stdin, or a golden vector (.frames)")
      ->check(ReadableFile());
  sub->add_flag("--json", args->options.json, "one JSON object per message, one per line");
  sub->add_flag("--full", args->options.full, "every value and byte instead of the first few");
  sub->add_option("--function", args->options.function,
                  "only applies of NAME and the results that answer them")
      ->type_name("NAME");
  sub->add_option_function<uint64_t>(
         "--id", [args](const uint64_t& id) { args->options.id = id; },
         "only the message with messageId ID and results for it")
      ->type_name("ID")
      ->check(NotNegative());
  sub->add_option("--key-file", args->key_file, "check signatures with the key in FILE")
      ->type_name("FILE")
      ->check(ReadableFile());
  sub->add_option("--follow", args->follow, "read a live capture socket (a broker's --capture URL)")
      ->type_name("URL");
  sub->add_option("--count", args->count, "with --follow: stop after N messages")
      ->type_name("N")
      ->check(NotNegative());
  sub->add_flag("--schema", args->schema, "print the schema in use (structs, fields, ordinals, ids)");
  sub->callback([args, chosen] { *chosen = [args] { return RunInspect(*args); }; });
}

void AddRecord(CLI::App& app, RunFunction* chosen) {
  struct RecordArgs {
    std::string url, file;
    uint64_t count = 0;
  };
  auto args = std::make_shared<RecordArgs>();
  CLI::App* sub = app.add_subcommand("record", "record a broker's capture socket to a file");
  sub->description(
      "record a broker's capture socket to a file\n"
      "\n"
      "Subscribes to a capture socket (a broker's --capture URL) and writes every message to\n"
      "FILE (a capture; read it with zerocan inspect) until interrupted or N messages.");
  sub->add_option("URL", args->url, "the capture socket")->required();
  sub->add_option("FILE", args->file, "the capture file to write")->required();
  sub->add_option("--count", args->count, "stop after N messages (0: until interrupted)")
      ->type_name("N")
      ->check(NotNegative());
  sub->callback([args, chosen] {
    *chosen = [args] { return RunRecord(args->url, args->file, args->count); };
  });
}

}  // namespace zerocan::tools
