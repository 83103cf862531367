// An example zerocan plugin: a shared library that adds functions to any engine.
//
//   zerocan engine --bind tcp://127.0.0.1:5555 --plugin ./libzerocan_example_plugin.so
//   zerocan call tcp://127.0.0.1:5555 norm '[3.0, 4.0]'      # prints 5.0
//
// The engine dlopen()s the library and calls its one C entry point,
// zerocan_register(zerocan::Engine&), which registers functions with def() exactly as
// code linked into the engine would. Build it against the installed package
// (find_package(zerocan) + target_link_libraries(... zerocan::zerocan)) or, inside this
// tree, with examples/CMakeLists.txt.
#include <cmath>
#include <string>
#include <vector>

#include "zerocan/engine.h"

extern "C" void zerocan_register(zerocan::Engine& engine) {
  // Euclidean norm of a float64 vector: the argument is a view of the received frame.
  engine.def("norm",
             [](zerocan::TensorView<const double> x) {
               double s = 0;
               for (double v : x) s += v * v;
               return std::sqrt(s);
             },
             {"x"});
  engine.def("greet", [](std::string name) { return "hello, " + name; }, {"name"});
  // Returns a fresh array; it leaves as a zero-copy frame (the vector is adopted).
  engine.def("ramp",
             [](int64_t n) {
               std::vector<double> out(static_cast<size_t>(n));
               for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<double>(i);
               return out;
             },
             {"n"});
}
