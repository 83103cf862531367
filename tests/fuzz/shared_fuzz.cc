// Fuzz target: shared-memory references (Payload.shared) decoded with
// DecodeLimits::SharedRefs::kMap. The input chooses a reference: which arena (a live one
// of this process, one that was closed, a well-formed name nobody serves, a file path,
// an arbitrary text, the live name with one character changed), an offset and a length
// anywhere in uint64 (often near the arena's end), and where it sits (bytes, a tensor of
// some dtype and shape, two references in a list, a keyword argument). The decoder must
// either refuse it with DecodeError or accept a reference that lies inside the live
// arena, whose every byte the walk then reads: never a crash, never a read outside.
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "tests/fuzz/fuzz_common.h"
#include "zerocan/generated.h"
#include "zerocan/shared.h"
#include "zerocan/version.h"

namespace {

using namespace zerocan;

// Reads the input front to back; past its end, zeros.
struct Input {
  const uint8_t* data;
  size_t size;
  uint8_t Byte() { return size == 0 ? 0 : (--size, *data++); }
  uint64_t U64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t{Byte()} << (8 * i);
    return v;
  }
  std::string Text(size_t max) {
    size_t n = Byte() % (max + 1);
    std::string s;
    while (n-- > 0) s.push_back(static_cast<char>(Byte()));
    return s;
  }
};

constexpr size_t kArenaBytes = size_t{1} << 20;

struct Arenas {
  std::shared_ptr<SharedArena> live = SharedArena::Create(kArenaBytes);
  std::string closed = SharedArena::Create(4096)->name();  // gone at once
  Arenas() {
    Buffer block = *live->Allocate(live->capacity());
    std::memset(block.mutable_data(), 0x5a, block.size());  // freed again: bytes remain
  }
};

Arenas& TheArenas() {
  static Arenas* arenas = new Arenas();  // lives to the process's end
  return *arenas;
}

void SetRef(wire::Payload::Builder payload, const std::string& arena, uint64_t offset,
            uint64_t length) {
  auto ref = payload.initShared();
  ref.setArena(arena);
  ref.setOffset(offset);
  ref.setLength(length);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Arenas& arenas = TheArenas();
  const std::string& live = arenas.live->name();
  Input in{data, size};
  std::string arena;
  uint8_t which = in.Byte() % 6;
  switch (which) {
    case 0: arena = live; break;
    case 1: arena = arenas.closed; break;
    case 2: arena = "zerocan-arena-1-0123456789abcdef0123456789abcdef"; break;
    case 3: arena = in.Byte() % 2 ? "/etc/passwd" : "/dev/shm/zerocan-arena-1"; break;
    case 4: arena = in.Text(120); break;
    default: {
      arena = live;
      arena[in.Byte() % arena.size()] ^= static_cast<char>(1 + in.Byte() % 127);
    }
  }
  arena.resize(std::strlen(arena.c_str()));  // a Text ends at its first NUL, as capnp sets it
  uint64_t offset = in.U64(), length = in.U64();
  uint8_t shape_of = in.Byte();
  if (shape_of & 1) offset = kArenaBytes - offset % 4096;  // around the end
  if (shape_of & 2) length %= 2 * 4096;
  uint8_t where = in.Byte() % 4;

  capnp::MallocMessageBuilder builder;
  auto env = builder.initRoot<wire::Envelope>();
  env.setVersion(kProtocolVersion);
  env.setMessageId(1);
  env.setSessionId(1);
  env.setSequence(1);
  auto apply = env.getBody().initApply();
  apply.setFunction("f");
  switch (where) {
    case 0: SetRef(apply.initArgs(1)[0].initBytes(), arena, offset, length); break;
    case 1: {
      auto tensor = apply.initArgs(1)[0].initTensor();
      tensor.setDtype(static_cast<wire::DType>(in.Byte() % 14));
      auto dims = tensor.initShape(1 + in.Byte() % 3);
      for (unsigned i = 0; i < dims.size(); ++i) dims.set(i, in.Byte() % 2 ? length : in.U64());
      SetRef(tensor.initData(), arena, offset, length);
      break;
    }
    case 2: {
      auto items = apply.initArgs(1)[0].initList(2);
      SetRef(items[0].initBytes(), arena, offset, length);
      SetRef(items[1].initBytes(), arena, in.U64() % kArenaBytes, in.U64() % 4096);
      break;
    }
    default: {
      auto field = apply.initKwargs(1)[0];
      field.setKey("x");
      SetRef(field.initValue().initBytes(), arena, offset, length);
    }
  }
  kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
  ReceivedMessage received;
  received.frames.push_back(Buffer::CopyOf(words.begin(), words.size() * sizeof(capnp::word)));
  DecodeLimits limits = fuzz::FuzzLimits();
  limits.shared_refs = DecodeLimits::SharedRefs::kMap;
  std::optional<Message> m;
  try {
    m.emplace(Message::Decode(std::move(received), limits));
  } catch (const DecodeError&) {
    return 0;  // refused, naming the field
  }
  // Accepted: only a reference inside the live arena may be.
  if (arena != live || offset > kArenaBytes || length > kArenaBytes - offset) std::abort();
  volatile uint64_t sink = fuzz::WalkMessage(*m, /*deep=*/false);
  (void)sink;
  return 0;
}
