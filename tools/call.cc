// `zerocan call URL FUNCTION [ARGS...]`: a command-line client. Each argument is a JSON
// value (an argument that is not valid JSON is sent as text, so `zerocan call URL echo
// hello` works); the result prints as one bare JSON value on stdout. A remote error or a
// timeout goes to stderr with a non-zero exit.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "tools/apply_util.h"
#include "tools/commands.h"
#include "zerocan/client.h"
#include "zerocan/curve.h"
#include "zerocan/signing.h"

namespace zerocan::tools {

namespace {

constexpr char kCallDescription[] =
    "call a function with JSON arguments, print the result\n"
    "\n"
    "Calls FUNCTION on the engine or broker frontend at URL and prints the result as one\n"
    "JSON value. ARGS are JSON (a list of numbers is sent as a typed array; an object\n"
    "{\"dtype\": \"float32\", \"shape\": [2, 2], \"data\": [...]} as a tensor; anything that is\n"
    "not JSON as text). Typed arrays print as {\"dtype\", \"shape\", \"data\"}, with data cut\n"
    "after 100 elements (\"elided\": how many more) unless --full. Options may stand\n"
    "anywhere; `--` ends them.";

constexpr char kCallFooter[] =
    "Exit status: 0 on a result; 1 on a remote error (stderr: its type, message and engine)\n"
    "or no reply within --timeout; 2 on a usage error.";

struct CallArgs {
  std::string url, function;
  std::vector<std::string> args;
  double timeout_s = 30;
  bool full = false;
  std::string key_file, curve_server_key;
};

int RunCall(const CallArgs& args) {
  auto timeout = std::chrono::milliseconds(static_cast<int64_t>(args.timeout_s * 1000));
  try {
    ClientOptions options;
    options.timeout = timeout;
    if (!args.key_file.empty()) options.signer = Signer::FromKeyFile(args.key_file);
    if (!args.curve_server_key.empty()) options.curve_server_key = ReadCurvePublicKey(args.curve_server_key);
    Client client(args.url, options);
    EnvelopeWriter writer(client.policy());
    ApplyWriter apply = writer.StartApply(args.function, args.args.size(), 0,
                                          static_cast<uint32_t>(timeout.count()));
    for (size_t i = 0; i < args.args.size(); ++i) {
      nlohmann::json arg = nlohmann::json::parse(args.args[i], nullptr, /*allow_exceptions=*/false);
      ValueWriter w = apply.arg(i);
      if (arg.is_discarded()) {
        w.Text(args.args[i]);
      } else {
        WriteJson(w, arg);
      }
    }
    Result result = client.Submit(writer, args.function, timeout).get();
    Value value = result.value();  // throws the failure
    // Text that is not UTF-8 prints with U+FFFD in place of the bad bytes.
    std::string out = ToJson(value, args.full ? 0 : 100)
                          .dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    std::printf("%s\n", out.c_str());
    return 0;
  } catch (const RemoteError& e) {
    std::string where = e.where().empty() ? "" : " (at " + e.where() + ")";
    std::fprintf(stderr, "zerocan call: %s: %s: %s%s\n", e.function().c_str(), e.type().c_str(),
                 e.message().c_str(), where.c_str());
    return 1;
  } catch (const TimeoutError& e) {
    std::fprintf(stderr, "zerocan call: %s (%.3g s)\n", e.what(), args.timeout_s);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan call: %s\n", e.what());
    return 1;
  }
}

}  // namespace

// A unit separator (never in a command line typed by hand) in front of an argument after
// `--` keeps CLI11 from reading it as an option; after an argument "[...]" it hides the
// closing bracket from CLI11's list syntax. Each positional's transform takes it off.
constexpr char kShield = '\x1f';

std::vector<std::string> ShieldCallArguments(std::vector<std::string> args) {
  std::vector<std::string> out;
  bool options_done = false;
  for (std::string& arg : args) {
    if (options_done) {
      out.push_back(kShield + std::move(arg));
    } else if (arg == "--") {
      options_done = true;
    } else if (arg.size() >= 2 && arg.front() == '[' && arg.back() == ']') {
      out.push_back(std::move(arg) + kShield);
    } else {
      out.push_back(std::move(arg));
    }
  }
  return out;
}

std::string UnshieldCallArgument(std::string arg) {
  if (!arg.empty() && arg.front() == kShield) {
    arg.erase(0, 1);
  } else if (arg.size() >= 3 && arg.front() == '[' && arg.back() == kShield) {
    arg.pop_back();
  }
  return arg;
}

void AddCall(CLI::App& app, RunFunction* chosen) {
  auto args = std::make_shared<CallArgs>();
  CLI::App* sub = app.add_subcommand("call", "call a function with JSON arguments, print the result");
  sub->description(kCallDescription);
  sub->footer(kCallFooter);
  auto unshield = [](std::string arg) { return UnshieldCallArgument(std::move(arg)); };
  sub->add_option("URL", args->url, "the engine or broker frontend")->required()->transform(unshield);
  sub->add_option("FUNCTION", args->function, "the function's name")->required()->transform(unshield);
  sub->add_option("ARGS", args->args, "its arguments, each a JSON value (or text)")->transform(unshield);
  sub->add_option("--timeout", args->timeout_s, "seconds to wait for the reply")
      ->capture_default_str()
      ->check(CLI::Range(1e-3, 1e6));
  sub->add_flag("--full", args->full, "print every element of typed arrays and bytes");
  sub->add_option("--key-file", args->key_file, "sign the call with the key in FILE, check the reply")
      ->type_name("FILE")
      ->check(Parses([](const std::string& f) { Signer::FromKeyFile(f); }));
  sub->add_option("--curve-server-key", args->curve_server_key,
                  "encrypt with CurveZMQ; the engine's or broker's public key (40-character Z85,\n"
                  "or a key file whose public_key is used). A wrong key never gets through: the\n"
                  "call times out")
      ->type_name("KEY_OR_FILE")
      ->check(Parses([](const std::string& k) { ReadCurvePublicKey(k); }));
  sub->callback([args, chosen] { *chosen = [args] { return RunCall(*args); }; });
}

}  // namespace zerocan::tools
