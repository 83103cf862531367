#include "bench.h"
namespace zerocan::bench {
// Not built yet.
void RunTune(const Options&, std::vector<Row>*) {}
}  // namespace zerocan::bench
