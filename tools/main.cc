// The one `zerocan` program: a CLI11 app with one subcommand per file in tools/.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "tools/commands.h"

namespace {

// The command list shows the first line of each subcommand's description; its own
// --help shows all of it.
class Formatter : public CLI::Formatter {
 public:
  std::string make_subcommand(const CLI::App* sub) const override {
    std::string description = sub->get_description();
    std::stringstream out;
    CLI::detail::format_help(out, sub->get_display_name(true), description.substr(0, description.find('\n')),
                             column_width_);
    return out.str();
  }
};

}  // namespace

int main(int argc, char** argv) {
  using namespace zerocan::tools;
  CLI::App app(
      "zerocan: remote apply calls over ZeroMQ with a Cap'n Proto envelope. Run an engine,\n"
      "a broker, call functions, inspect captured traffic, tune this machine's threshold.",
      "zerocan");
  app.formatter(std::make_shared<Formatter>());
  app.require_subcommand(1);
  app.failure_message([](const CLI::App* a, const CLI::Error& e) {
    std::string name = "zerocan";
    for (const CLI::App* sub : a->get_subcommands()) name += " " + sub->get_name();
    return name + ": " + e.what() + "\nRun `" + name + " --help` for the options.\n";
  });
  RunFunction chosen;
  AddDemo(app, &chosen);
  AddEngine(app, &chosen);
  AddBroker(app, &chosen);
  AddCall(app, &chosen);
  AddInspect(app, &chosen);
  AddRecord(app, &chosen);
  AddSchema(app, &chosen);
  AddTune(app, &chosen);
  AddKeygen(app, &chosen);
  AddVersion(app, &chosen);
  auto known = [&app](const std::string& name) {
    for (const CLI::App* sub : app.get_subcommands({})) {
      if (sub->check_name(name)) return true;
    }
    return false;
  };
  if (argc > 1 && argv[1][0] != '-' && !known(argv[1])) {
    std::fprintf(stderr, "zerocan: unknown command \"%s\"\nRun `zerocan --help` for the commands.\n", argv[1]);
    return 2;
  }
  // CLI11 takes the arguments last first, without the program's name.
  std::vector<std::string> args(argv + 1, argv + argc);
  if (argc > 1 && std::string(argv[1]) == "call") {
    std::vector<std::string> rest = ShieldCallArguments({argv + 2, argv + argc});
    rest.insert(rest.begin(), "call");
    args = std::move(rest);
  }
  std::reverse(args.begin(), args.end());
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;  // a usage error, whatever CLI11's own code for it
  }
  return chosen ? chosen() : 2;
}
