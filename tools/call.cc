// `zerocan call URL FUNCTION [ARGS...] [--timeout SECONDS] [--full] [--key-file F]
//  [--curve-server-key KEY_OR_FILE]`: a command-line
// client. Each argument is a JSON value (an argument that is not valid JSON is sent as
// text, so `zerocan call URL echo hello` works); the result prints as one bare JSON
// value on stdout. A remote error or a timeout goes to stderr with a non-zero exit.
#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "tools/apply_util.h"
#include "tools/commands.h"
#include "zerocan/client.h"
#include "zerocan/curve.h"

namespace zerocan::tools {

namespace {

constexpr char kCallHelp[] =
    "usage: zerocan call URL FUNCTION [ARGS...] [--timeout SECONDS] [--full] [--key-file F]\n"
    "                    [--curve-server-key KEY_OR_FILE]\n"
    "\n"
    "Calls FUNCTION on the engine or broker frontend at URL and prints the result as one\n"
    "JSON value. ARGS are JSON (a list of numbers is sent as a typed array; an object\n"
    "{\"dtype\": \"float32\", \"shape\": [2, 2], \"data\": [...]} as a tensor; anything that is\n"
    "not JSON as text). Typed arrays print as {\"dtype\", \"shape\", \"data\"}, with data cut\n"
    "after 100 elements (\"elided\": how many more) unless --full. Options may stand\n"
    "anywhere; `--` ends them.\n"
    "--curve-server-key KEY_OR_FILE: encrypt with CurveZMQ; the engine's or broker's public\n"
    "key (40-character Z85, or a key file whose public_key is used). A wrong key never\n"
    "gets through: the call times out.\n"
    "\n"
    "Exit status: 0 on a result; 1 on a remote error (stderr: its type, message and engine)\n"
    "or no reply within --timeout (default 30 s); 2 on a usage error.\n";

}  // namespace

int RunCall(int argc, char** argv) {
  std::vector<std::string> positional;
  double timeout_s = 30;
  bool full = false;
  bool options_done = false;
  std::string key_file;
  std::string curve_server_key;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string_view a = argv[i];
      std::string value;
      if (options_done || a.size() < 3 || a.substr(0, 2) != "--") {
        positional.emplace_back(a);
      } else if (a == "--") {
        options_done = true;
      } else if (a == "--help") {
        std::fputs(kCallHelp, stdout);
        return 0;
      } else if (a == "--full") {
        full = true;
      } else if (TakeOption(argc, argv, &i, "--key-file", &value)) {
        key_file = value;
      } else if (TakeOption(argc, argv, &i, "--curve-server-key", &value)) {
        curve_server_key = ReadCurvePublicKey(value);
      } else if (TakeOption(argc, argv, &i, "--timeout", &value)) {
        timeout_s = std::stod(value);
        if (!(timeout_s > 0)) throw Error("--timeout must be a positive number of seconds");
      } else {
        std::fprintf(stderr, "zerocan call: unknown option \"%s\"\n\n%s", argv[i], kCallHelp);
        return 2;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan call: %s\n", e.what());
    return 2;
  }
  if (positional.size() < 2) {
    std::fputs(kCallHelp, stderr);
    return 2;
  }
  const std::string& url = positional[0];
  const std::string& function = positional[1];
  auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  try {
    ClientOptions options;
    options.timeout = timeout;
    if (!key_file.empty()) options.signer = Signer::FromKeyFile(key_file);
    options.curve_server_key = curve_server_key;
    Client client(url, options);
    EnvelopeWriter writer(client.policy());
    ApplyWriter apply = writer.StartApply(function, positional.size() - 2, 0,
                                          static_cast<uint32_t>(timeout.count()));
    for (size_t i = 2; i < positional.size(); ++i) {
      nlohmann::json arg = nlohmann::json::parse(positional[i], nullptr, /*allow_exceptions=*/false);
      ValueWriter w = apply.arg(i - 2);
      if (arg.is_discarded()) {
        w.Text(positional[i]);
      } else {
        WriteJson(w, arg);
      }
    }
    Result result = client.Submit(writer, function, timeout).get();
    Value value = result.value();  // throws the failure
    std::string out = ToJson(value, full ? 0 : 100).dump();
    std::printf("%s\n", out.c_str());
    return 0;
  } catch (const RemoteError& e) {
    std::string where = e.where().empty() ? "" : " (at " + e.where() + ")";
    std::fprintf(stderr, "zerocan call: %s: %s: %s%s\n", e.function().c_str(), e.type().c_str(),
                 e.message().c_str(), where.c_str());
    return 1;
  } catch (const TimeoutError& e) {
    std::fprintf(stderr, "zerocan call: %s (%.3g s)\n", e.what(), timeout_s);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan call: %s\n", e.what());
    return 1;
  }
}

}  // namespace zerocan::tools
