#include "bench.h"
namespace zerocan::bench {
// Not built yet.
void RunApply(const Options&, std::vector<Row>*) {}
}  // namespace zerocan::bench
