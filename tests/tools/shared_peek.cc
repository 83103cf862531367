// zerocan_shared_peek: the C++ side of the cross-language shared memory tests
// (clients/python/tests/test_shared.py, test_shared_leases.py).
//
//   zerocan_shared_peek read NAME OFFSET LENGTH   maps arena NAME (C++ or Python) and
//       prints "<LENGTH> <sum of the bytes> <first byte>"; a DecodeError goes to stderr,
//       exit status 1
//   zerocan_shared_peek hold NAME OFFSET LENGTH   maps arena NAME, resolves the range (a
//       lease on its block), prints "held <sum of the bytes>", and keeps the view until
//       stdin closes; a DecodeError goes to stderr, exit status 1
//   zerocan_shared_peek serve LENGTH BYTE         makes an arena with a LENGTH-byte block
//       of BYTE, prints "NAME OFFSET LENGTH", and keeps it until stdin closes
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <iostream>
#include <string>

#include "transport/shared_segments.h"
#include "zerocan/error.h"
#include "zerocan/shared.h"

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  try {
    if (mode == "read" && argc == 5) {
      zerocan::internal::SharedSegments segments;
      zerocan::Buffer bytes = segments.Resolve(argv[2], std::stoull(argv[3]),
                                               std::stoull(argv[4]), 0, "args[0]");
      uint64_t sum = 0;
      for (std::byte b : bytes.span()) sum += static_cast<uint8_t>(b);
      std::printf("%zu %llu %d\n", bytes.size(), static_cast<unsigned long long>(sum),
                  bytes.empty() ? -1 : static_cast<int>(bytes.data()[0]));
      return 0;
    }
    if (mode == "hold" && argc == 5) {
      zerocan::internal::SharedSegments segments;
      std::optional<zerocan::Buffer> view = segments.Resolve(
          argv[2], std::stoull(argv[3]), std::stoull(argv[4]), 0, "args[0]");
      uint64_t sum = 0;
      for (std::byte b : view->span()) sum += static_cast<uint8_t>(b);
      std::printf("held %llu\n", static_cast<unsigned long long>(sum));
      std::fflush(stdout);
      std::string line;
      while (std::getline(std::cin, line)) {
      }
      view.reset();  // releases the lease
      return 0;
    }
    if (mode == "serve" && argc == 4) {
      size_t length = std::stoull(argv[2]);
      auto arena = zerocan::SharedArena::Create(length);
      std::optional<zerocan::Buffer> block = arena->Allocate(length);
      if (!block) return 2;
      std::memset(block->mutable_data(), std::stoi(argv[3]), length);
      auto at = *arena->Find(*block);
      std::printf("%s %llu %llu\n", arena->name().c_str(),
                  static_cast<unsigned long long>(at.offset),
                  static_cast<unsigned long long>(at.length));
      std::fflush(stdout);
      std::string line;
      while (std::getline(std::cin, line)) {
      }
      return 0;
    }
  } catch (const zerocan::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  std::fprintf(stderr,
               "usage: zerocan_shared_peek read NAME OFFSET LENGTH | hold NAME OFFSET LENGTH"
               " | serve LENGTH BYTE\n");
  return 2;
}
