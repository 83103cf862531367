// `zerocan call URL FUNCTION [ARGS...] [--kwarg NAME=VALUE...]`: a command-line client.
// Each argument is a JSON value (an argument that is not valid JSON is sent as text, so
// `zerocan call URL echo hello` works), or they all come from --args-file (a JSON array,
// or an object with "args" and "kwargs"); the result prints
// as one bare JSON value on stdout. A remote error, a timeout or an endpoint where nothing
// listens goes to stderr with a non-zero exit.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tools/apply_util.h"
#include "tools/commands.h"
#include "tools/endpoint.h"
#include "zerocan/client.h"
#include "zerocan/curve.h"
#include "zerocan/signing.h"

namespace zerocan::tools {

namespace {

// The longest --timeout, in seconds (about 31.7 years). The client's deadline is a
// steady_clock time point in int64 nanoseconds: now + 9.2e9 s would overflow.
constexpr double kMaxTimeoutSeconds = 1e9;

constexpr char kCallDescription[] =
    "call a function with JSON arguments, print the result\n"
    "\n"
    "Calls FUNCTION on the engine or broker frontend at URL and prints the result as one\n"
    "JSON value. ARGS are JSON (a list of numbers is sent as a typed array; an object\n"
    "{\"dtype\": \"float32\", \"shape\": [2, 2], \"data\": [...]} as a tensor; anything that is\n"
    "not JSON as text). Numbers JSON cannot carry exactly are refused: integers beyond\n"
    "int64 and uint64, NaN, Infinity, 1e400 (quote them, '\"NaN\"', to send text).\n"
    "--kwarg NAME=VALUE (repeatable) adds a keyword argument, VALUE read as ARGS are.\n"
    "--args-file FILE (- for stdin) gives the arguments instead, of any size: one JSON\n"
    "array, or an object {\"args\": [...], \"kwargs\": {\"name\": value, ...}}. Typed\n"
    "arrays print as {\"dtype\", \"shape\", \"data\"}, with data cut after 100\n"
    "elements (\"elided\": how many more) unless --full. Floats JSON cannot hold print as\n"
    "NaN, Infinity and -Infinity (as Python's json module writes them). Options may stand\n"
    "anywhere; `--` ends them.";

constexpr char kCallFooter[] =
    "Exit status: 0 on a result; 1 on a remote error (stderr: its type, message and engine),\n"
    "no reply within --timeout, an unknown host or nothing listening at URL; 2 on a usage\n"
    "error (bad options, a URL that is not TRANSPORT://ADDRESS, an argument refused).";

struct CallArgs {
  std::string url, function;
  std::vector<std::string> args;
  std::vector<std::string> kwargs;  // NAME=VALUE
  std::string args_file;
  double timeout_s = 30;
  bool full = false;
  std::string key_file, curve_server_key, curve_key_file;
};

// An argument that cannot be sent as given: a usage error.
class ArgumentRefused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

CLI::Validator TimeoutSeconds() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double seconds = 0;
        if (!CLI::detail::lexical_cast(text, seconds)) {
          return "expected a number of seconds, got \"" + text + "\"";
        }
        if (!(seconds > 0 && seconds <= kMaxTimeoutSeconds)) {
          return "must be more than 0 and at most 1e9 seconds, got " + text;
        }
        return {};
      },
      "(0, 1e9]");
}

// Command-line argument `index` as JSON; text that is not JSON as a JSON string.
nlohmann::json ArgumentJson(const std::string& text, size_t index) {
  try {
    std::optional<nlohmann::json> json = ParseExactJson(text);
    return json ? std::move(*json) : nlohmann::json(text);
  } catch (const std::invalid_argument& e) {
    std::string hint = text.empty() || text[0] == '[' || text[0] == '{'
                           ? ""
                           : " (to send it as text, quote it: '\"" + text + "\"')";
    throw ArgumentRefused("argument " + std::to_string(index) + ": " + e.what() + hint);
  }
}

// The arguments of a call: positional, then keywords in the order given.
struct Arguments {
  std::vector<nlohmann::json> positional;
  std::vector<std::pair<std::string, nlohmann::json>> keywords;
};

// Adds keyword `name`; refuses an empty name and one given twice.
void AddKeyword(Arguments* out, std::string name, nlohmann::json value, const std::string& where) {
  if (name.empty()) throw ArgumentRefused(where + ": a keyword argument needs a name");
  for (const auto& [given, v] : out->keywords) {
    if (given == name) {
      throw ArgumentRefused(where + ": keyword argument '" + name + "' given twice");
    }
  }
  out->keywords.emplace_back(std::move(name), std::move(value));
}

// From --args-file (a file, or - for stdin): a JSON array of the positional arguments, or
// an object with "args" (an array) and "kwargs" (an object), either optional.
Arguments FileArguments(const std::string& path) {
  std::string name = "--args-file " + path;
  std::ifstream file;
  if (path != "-") {
    file.open(path, std::ios::binary);
    if (!file) throw ArgumentRefused(name + ": " + std::strerror(errno));
  }
  std::ostringstream text;
  text << (path == "-" ? std::cin : file).rdbuf();
  std::optional<nlohmann::json> json;
  try {
    json = ParseExactJson(text.view());
    if (!json) json = nlohmann::json::parse(text.view());  // not JSON: throws its description
  } catch (const std::exception& e) {
    throw ArgumentRefused(name + ": " + e.what());
  }
  Arguments out;
  nlohmann::json positional = nlohmann::json::array(), keywords = nlohmann::json::object();
  if (json->is_array()) {
    positional = std::move(*json);
  } else if (json->is_object()) {
    for (auto& [key, value] : json->items()) {
      if (key == "args" && value.is_array()) {
        positional = std::move(value);
      } else if (key == "kwargs" && value.is_object()) {
        keywords = std::move(value);
      } else {
        throw ArgumentRefused(name + ": expected \"args\" (an array) and \"kwargs\" (an "
                              "object), got \"" + key + "\" (" + value.type_name() + ")");
      }
    }
  } else {
    throw ArgumentRefused(name + ": expected a JSON array of the arguments, or an object with "
                          "\"args\" and \"kwargs\", got " + std::string(json->type_name()));
  }
  out.positional.reserve(positional.size());
  for (nlohmann::json& arg : positional) out.positional.push_back(std::move(arg));
  for (auto& [key, value] : keywords.items()) AddKeyword(&out, key, std::move(value), name);
  return out;
}

// The arguments: from --args-file, else each command-line argument and --kwarg.
Arguments CallArguments(const CallArgs& args) {
  if (!args.args_file.empty()) return FileArguments(args.args_file);
  Arguments out;
  for (size_t i = 0; i < args.args.size(); ++i) {
    out.positional.push_back(ArgumentJson(args.args[i], i));
  }
  for (const std::string& kwarg : args.kwargs) {
    size_t eq = kwarg.find('=');
    if (eq == std::string::npos) {
      throw ArgumentRefused("--kwarg " + kwarg + ": expected NAME=VALUE");
    }
    std::string name = kwarg.substr(0, eq);
    nlohmann::json value;
    try {
      value = ArgumentJson(kwarg.substr(eq + 1), 0);
    } catch (const ArgumentRefused& e) {
      std::string why = e.what();  // "argument 0: ..."
      throw ArgumentRefused("--kwarg " + name + why.substr(why.find(':')));
    }
    AddKeyword(&out, std::move(name), std::move(value), "--kwarg");
  }
  return out;
}

int RunCall(const CallArgs& args) {
  // Whole milliseconds, rounded up so that a short timeout never becomes none at all.
  auto timeout = std::chrono::milliseconds(static_cast<int64_t>(std::ceil(args.timeout_s * 1000)));
  // On the wire as Client::apply_for sends it: beyond 32 bits of milliseconds, 0 (none).
  uint32_t wire_timeout_ms = timeout.count() > UINT32_MAX ? 0 : static_cast<uint32_t>(timeout.count());
  Arguments arguments;
  try {
    arguments = CallArguments(args);
  } catch (const ArgumentRefused& e) {
    std::fprintf(stderr, "zerocan call: %s\n", e.what());
    return 2;
  }
  std::string unreachable =
      EndpointUnreachable(args.url, std::min(timeout, std::chrono::milliseconds(1000)));
  if (!unreachable.empty()) {
    std::fprintf(stderr, "zerocan call: %s: %s\n", args.url.c_str(), unreachable.c_str());
    return 1;
  }
  try {
    ClientOptions options;
    options.timeout = timeout;
    if (!args.key_file.empty()) options.signer = Signer::FromKeyFile(args.key_file);
    if (!args.curve_server_key.empty()) options.curve_server_key = ReadCurvePublicKey(args.curve_server_key);
    if (!args.curve_key_file.empty()) options.curve = ReadCurveServerKeys(args.curve_key_file);
    Client client(args.url, options);
    EnvelopeWriter writer(client.policy());
    ApplyWriter apply = writer.StartApply(args.function, arguments.positional.size(),
                                          arguments.keywords.size(), wire_timeout_ms);
    for (size_t i = 0; i < arguments.positional.size(); ++i) {
      ValueWriter w = apply.arg(i);
      WriteJson(w, arguments.positional[i]);
    }
    for (size_t i = 0; i < arguments.keywords.size(); ++i) {
      ValueWriter w = apply.kwarg(i, arguments.keywords[i].first);
      WriteJson(w, arguments.keywords[i].second);
    }
    arguments = Arguments();
    Result result = client.Submit(writer, args.function, timeout).get();
    Value value = result.value();  // throws the failure
    // Text that is not UTF-8 prints with U+FFFD in place of the bad bytes.
    std::string out = DumpJson(ToJson(value, args.full ? 0 : 100));
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
  sub->add_option("URL", args->url, "the engine or broker frontend")
      ->required()
      ->transform(unshield)
      ->check(CLI::Validator([](std::string& url) { return EndpointSyntaxProblem(url); }, ""));
  sub->add_option("FUNCTION", args->function, "the function's name")->required()->transform(unshield);
  CLI::Option* positional =
      sub->add_option("ARGS", args->args, "its arguments, each a JSON value (or text)")->transform(unshield);
  CLI::Option* keywords =
      sub->add_option("--kwarg", args->kwargs,
                      "a keyword argument, NAME=VALUE (VALUE as ARGS are); repeatable")
          ->type_name("NAME=VALUE")
          ->expected(1)
          ->allow_extra_args(false)  // one NAME=VALUE per --kwarg; ARGS may follow
          ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--args-file", args->args_file,
                  "the arguments in FILE (- for stdin), instead of ARGS and --kwarg: a JSON\n"
                  "array, or an object {\"args\": [...], \"kwargs\": {...}}")
      ->type_name("FILE")
      ->check(ReadableFile())
      ->excludes(positional)
      ->excludes(keywords);
  sub->add_option("--timeout", args->timeout_s,
                  "seconds to wait for the reply: more than 0, at most 1e9 (about 31 years);\n"
                  "rounded up to whole milliseconds")
      ->type_name("SECONDS")
      ->capture_default_str()
      ->check(TimeoutSeconds());
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
  sub->add_option("--curve-key-file", args->curve_key_file,
                  "with --curve-server-key: this client's own key pair (zerocan keygen --curve\n"
                  "FILE), for a server that admits only listed keys (--curve-allow); default: a\n"
                  "fresh pair")
      ->type_name("FILE")
      ->check(Parses([](const std::string& f) { ReadCurveServerKeys(f); }))
      ->needs(sub->get_option("--curve-server-key"));
  sub->callback([args, chosen] { *chosen = [args] { return RunCall(*args); }; });
}

}  // namespace zerocan::tools
