// Calls that pass their arguments in shared memory (Payload.shared; zerocan/shared.h):
// what the writer places where, what the decoder maps and refuses, and a client and an
// engine on one host that learn so from their hellos.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <absl/strings/str_cat.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"
#include "tool_process.h"
#include "tools/inspect_render.h"
#include "zerocan/broker.h"
#include "zerocan/client.h"
#include "zerocan/engine.h"
#include "zerocan/generated.h"
#include "zerocan/shared.h"
#include "zerocan/stats.h"
#include "zerocan/transport/zmq.h"
#include "zerocan/zerocan.h"
#include <zmq.hpp>

namespace zerocan {
namespace {

using ::testing::HasSubstr;
using std::chrono::milliseconds;
using testing::WaitUntil;
using testing::Why;

Policy SharedPolicy(SharedArena& arena, size_t threshold = 1024) {
  Policy p = testing::FixedPolicy(threshold);
  p.shared_arena = &arena;
  return p;
}

// apply("f", float64 tensor over `data`).
Outgoing TensorCall(const Policy& policy, Buffer data) {
  EnvelopeWriter w(policy);
  w.SetHeader(Header{1, 1, 1, 5});
  w.StartApply("f", 1, 0).arg(0).Array(DType::kFloat64, Shape{data.size() / 8}, std::move(data));
  return w.Finish();
}

ReceivedMessage Received(const Outgoing& out) {
  ReceivedMessage received;
  received.frames.push_back(testing::Frame(out.envelope().data(), out.envelope().size()));
  for (const Buffer& f : out.payload_frames()) received.frames.push_back(testing::Frame(f.data(), f.size()));
  return received;
}

DecodeLimits Accepting() {
  DecodeLimits limits;
  limits.shared_refs = DecodeLimits::SharedRefs::kMap;
  return limits;
}

TEST(SharedPlacementTest, AnArenaBlockTravelsAsAReferenceWithNoCopyAndIsReadInPlace) {
  auto arena = SharedArena::Create(1 << 20);
  Buffer block = *arena->Allocate(64 << 10);
  for (size_t i = 0; i < block.size() / 8; ++i) {
    double v = static_cast<double>(i);
    std::memcpy(block.mutable_data() + i * 8, &v, 8);
  }
  StatsSnapshot before = GlobalStats().Snapshot();
  Outgoing out = TensorCall(SharedPolicy(*arena), block);
  StatsSnapshot after = GlobalStats().Snapshot();
  EXPECT_TRUE(out.payload_frames().empty());
  ASSERT_EQ(out.shared_blocks().size(), 1u);
  EXPECT_EQ(out.shared_blocks()[0].data(), block.data());  // the block itself, not a copy
  EXPECT_EQ(after.shared_refs_sent, before.shared_refs_sent + 1);
  EXPECT_EQ(after.shared_bytes_copied, before.shared_bytes_copied);
  EXPECT_EQ(after.buffer_copies, before.buffer_copies);

  Message m = Message::Decode(Received(out), Accepting());
  EXPECT_EQ(GlobalStats().Snapshot().shared_refs_received, after.shared_refs_received + 1);
  Buffer view = m.arg(0).TensorBytes();
  ASSERT_EQ(view.size(), block.size());
  EXPECT_EQ(std::memcmp(view.data(), block.data(), block.size()), 0);
  // The receiver reads the same memory, not a copy of it. In the arena's own process
  // that is the arena's own mapping (another process maps it read-only: the tests of
  // engines in other processes below); a byte the sender writes shows through the view.
  EXPECT_EQ(view.data(), block.data());
  block.mutable_data()[8] = std::byte{0x7f};
  EXPECT_EQ(view.data()[8], std::byte{0x7f});
  EXPECT_EQ(m.arg(0).As<std::vector<double>>().size(), block.size() / 8);
}

TEST(SharedPlacementTest, OrdinaryMemoryIsCopiedIntoTheArenaOnceAndSmallValuesStayInline) {
  auto arena = SharedArena::Create(1 << 20);
  std::vector<double> values(4096);
  std::iota(values.begin(), values.end(), 0.0);
  StatsSnapshot before = GlobalStats().Snapshot();
  Policy policy = SharedPolicy(*arena);
  EnvelopeWriter w(policy);
  w.SetHeader(Header{1, 1, 1, 5});
  ApplyWriter a = w.StartApply("f", 2, 0);
  a.arg(0).Write(values);  // an lvalue: lent, then copied into the arena once
  a.arg(1).Write(std::vector<double>{1.0, 2.0});  // under the threshold: inline
  Outgoing out = w.Finish();
  StatsSnapshot after = GlobalStats().Snapshot();
  EXPECT_TRUE(out.payload_frames().empty());
  ASSERT_EQ(out.shared_blocks().size(), 1u);
  EXPECT_EQ(after.shared_bytes_copied, before.shared_bytes_copied + values.size() * 8);
  EXPECT_EQ(arena->used(), values.size() * 8);
  Message m = Message::Decode(Received(out), Accepting());
  EXPECT_EQ(m.arg(0).As<std::vector<double>>(), values);
  EXPECT_EQ(m.arg(1).As<std::vector<double>>(), (std::vector<double>{1.0, 2.0}));
  out = Outgoing();
  m = Message();
  EXPECT_EQ(arena->used(), 0u);  // the block returned once the message and its view went
}

TEST(SharedPlacementTest, AFullArenaFallsBackToAFrame) {
  auto arena = SharedArena::Create(64 << 10);
  Buffer filler = *arena->Allocate(60 << 10);
  std::vector<double> values(1024, 1.5);  // 8 KiB: no room left
  uint64_t fallbacks = GlobalStats().Snapshot().shared_fallbacks;
  Outgoing out = TensorCall(SharedPolicy(*arena), Buffer::CopyOf(values.data(), 8192));
  EXPECT_EQ(out.payload_frames().size(), 1u);
  EXPECT_TRUE(out.shared_blocks().empty());
  EXPECT_EQ(GlobalStats().Snapshot().shared_fallbacks, fallbacks + 1);
  EXPECT_EQ(Message::Decode(Received(out)).arg(0).As<std::vector<double>>(), values);
}

TEST(SharedPlacementTest, AReceiverThatDoesNotAcceptReferencesNamesTheField) {
  auto arena = SharedArena::Create(1 << 20);
  Outgoing out = TensorCall(SharedPolicy(*arena), *arena->Allocate(8192));
  try {
    Message::Decode(Received(out));
    ADD_FAILURE() << "a reference was accepted by default";
  } catch (const DecodeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("apply.args[0].tensor.data.shared"));
    EXPECT_THAT(e.what(), HasSubstr(arena->name()));
    EXPECT_THAT(e.what(), HasSubstr("does not accept"));
  }
}

// An apply whose one argument is a uint8 tensor of `length` bytes at `offset` in `arena`.
FrameList CraftedReference(const std::string& arena, uint64_t offset, uint64_t length) {
  capnp::MallocMessageBuilder builder;
  auto env = builder.initRoot<wire::Envelope>();
  env.setVersion(kProtocolVersion);
  env.setMessageId(1);
  env.setSessionId(1);
  env.setSequence(1);
  auto apply = env.getBody().initApply();
  apply.setFunction("f");
  auto tensor = apply.initArgs(1)[0].initTensor();
  tensor.setDtype(wire::DType::UINT8);
  tensor.initShape(1).set(0, length);
  auto ref = tensor.initData().initShared();
  ref.setArena(arena);
  ref.setOffset(offset);
  ref.setLength(length);
  kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
  FrameList frames;
  frames.push_back(testing::Frame(words.begin(), words.size() * sizeof(capnp::word)));
  return frames;
}

std::string Rejection(FrameList frames) {
  try {
    Message::Decode(ReceivedMessage{{}, std::move(frames)}, Accepting());
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), DecodeError::Code::kMalformed) << e.what();
    return e.what();
  }
  return "accepted";
}

TEST(SharedPlacementTest, ReferencesOutsideAnArenaOrToNoArenaAreDecodeErrorsNamingTheField) {
  auto arena = SharedArena::Create(1 << 20);
  const std::string field = "apply.args[0].tensor.data.shared";
  // Inside the arena but in no block handed out (never, or returned already): refused,
  // since nothing stops the owner from writing there.
  EXPECT_THAT(Rejection(CraftedReference(arena->name(), 0, 4096)),
              HasSubstr(field + ": shared memory @" + arena->name() +
                        ": 4096 bytes at offset 0 are in no block of the arena that is in use"));
  {
    std::optional<Buffer> returned = arena->Allocate(8192);
    ASSERT_TRUE(returned);
  }
  EXPECT_THAT(Rejection(CraftedReference(arena->name(), 0, 4096)), HasSubstr("in no block"));
  std::optional<Buffer> block = arena->Allocate(8192);
  ASSERT_TRUE(block);
  EXPECT_EQ(Rejection(CraftedReference(arena->name(), 0, 4096)), "accepted");
  // Across the end of the block into free space: refused.
  EXPECT_THAT(Rejection(CraftedReference(arena->name(), 4096, 8192)), HasSubstr("in no block"));
  for (auto [offset, length] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, (1 << 20) + 1}, {(1 << 20) - 10, 11}, {UINT64_MAX, 2}, {1, UINT64_MAX}}) {
    std::string why = Rejection(CraftedReference(arena->name(), offset, length));
    EXPECT_THAT(why, HasSubstr(field));
    EXPECT_THAT(why, HasSubstr("outside the arena"));
  }
  // No arena of that name on this host: a file path, a closed arena, nothing at all.
  std::string closed;
  {
    auto gone = SharedArena::Create(1 << 16);
    closed = gone->name();
  }
  for (std::string name : {std::string("/etc/passwd"), closed, std::string("zerocan-arena-1-0"),
                           std::string(200, 'x'), std::string("a\0b", 3), std::string()}) {
    std::string why = Rejection(CraftedReference(name, 0, 8));
    EXPECT_THAT(why, HasSubstr(field)) << name;
    EXPECT_THAT(why, ::testing::AnyOf(HasSubstr("no arena there"), HasSubstr("not an arena name")))
        << name;
  }
}

TEST(SharedPlacementTest, CopyForwardsOnlyReferencesIntoTheWritersOwnArena) {
  auto arena = SharedArena::Create(1 << 20);
  Buffer block = *arena->Allocate(4096);
  std::memset(block.mutable_data(), 0x11, block.size());
  Outgoing out = TensorCall(SharedPolicy(*arena), block);
  // Back to the arena's owner (an echo): the same reference, nothing read or copied.
  DecodeLimits describe;
  describe.shared_refs = DecodeLimits::SharedRefs::kDescribe;
  Message back = Message::Decode(Received(out), describe);
  EXPECT_THROW(back.arg(0).TensorBytes(), Error);  // not mapped: nothing to read
  EnvelopeWriter w(SharedPolicy(*arena));
  w.SetHeader(Header{1, 1, 1, 5});
  w.StartApply("f", 1, 0).arg(0).Copy(back.arg(0));
  Outgoing again = w.Finish();
  EXPECT_TRUE(again.payload_frames().empty());
  EXPECT_EQ(testing::Bytes(again.envelope()), testing::Bytes(out.envelope()));

  // Anywhere else (a writer without that arena): the bytes go as a frame. The first
  // sender frees its block once its own call is answered, and the next receiver may not
  // share its host.
  Message mapped = Message::Decode(Received(out), Accepting());
  EnvelopeWriter other(testing::FixedPolicy(1024));
  other.SetHeader(Header{1, 1, 1, 5});
  other.StartApply("f", 1, 0).arg(0).Copy(mapped.arg(0));
  Outgoing forwarded = other.Finish();
  ASSERT_EQ(forwarded.payload_frames().size(), 1u);
  EXPECT_TRUE(forwarded.shared_blocks().empty());
  Message m = Message::Decode(Received(forwarded));
  EXPECT_EQ(m.arg(0).TensorBytes().data()[100], std::byte{0x11});
}

TEST(SharedPlacementTest, InspectListsAReferenceWithItsArenaAndSizeWithoutReadingIt) {
  auto arena = SharedArena::Create(1 << 20);
  Outgoing out = TensorCall(SharedPolicy(*arena), *arena->Allocate(8192));
  std::string text = tools::InspectMessage(Received(out));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("apply.args[0]: tensor float64 [1024], 8192 bytes, "
                                           "shared arena ", arena->name(), " at +0")))
      << text;
  tools::InspectOptions json;
  json.json = true;
  std::string line = tools::InspectMessage(Received(out), json);
  EXPECT_THAT(line, HasSubstr("\"placement\":\"shared\"")) << line;
  EXPECT_THAT(line, HasSubstr(arena->name()));
}

// ---- a client and an engine ---------------------------------------------------------------

// Options of a client that shares memory through `arena`.
ClientOptions Sharing(std::shared_ptr<SharedArena> arena,
                      milliseconds timeout = milliseconds(60000)) {
  ClientOptions co;
  co.shared_arena = std::move(arena);
  co.shared_memory = true;
  co.timeout = timeout;
  return co;
}

// A uint8 tensor over `block` (the Buffer shares it: no copy).
Tensor Bytes(const Buffer& block) { return Tensor(DType::kUInt8, Shape{block.size()}, block); }

struct Kept {
  std::mutex mu;
  Buffer view;
};

TEST(SharedCallTest, AClientAndAnEngineOnOneHostPassArgumentsInPlace) {
  auto kept = std::make_shared<Kept>();
  EngineOptions eo;
  eo.builtins = true;
  Engine engine(eo);
  // Keeps its argument's view: the test then writes the client's block and reads it here.
  engine.DefRaw("keep", [kept](const Call& call, ValueWriter& result) {
    std::lock_guard<std::mutex> lock(kept->mu);
    kept->view = call.arg(0).TensorBytes();
    result.Int(static_cast<int64_t>(kept->view.size()));
  });
  engine.def("twice", [](TensorView<double> x) {
    for (double& e : x) e *= 2;
    return x;
  });
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  auto arena = SharedArena::Create(64 << 20);
  ClientOptions co = Sharing(arena, milliseconds(10000));
  Client client(engine.last_endpoint(), co);
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); })) << "no hello from the engine";

  Buffer block = *arena->Allocate(8 << 20);
  std::memset(block.mutable_data(), 1, block.size());
  StatsSnapshot before = GlobalStats().Snapshot();
  Result r = client.apply("keep", Bytes(block)).get();
  StatsSnapshot after = GlobalStats().Snapshot();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_EQ(r.as<int64_t>(), 8 << 20);
  EXPECT_EQ(after.shared_refs_sent, before.shared_refs_sent + 1);
  EXPECT_EQ(after.shared_refs_received, before.shared_refs_received + 1);
  EXPECT_EQ(after.shared_bytes_copied, before.shared_bytes_copied);  // no copy at all
  EXPECT_EQ(after.frames_sent_zero_copy, before.frames_sent_zero_copy);  // and no frame
  // The engine kept its view past the call: it holds the block, and the caller can tell.
  EXPECT_TRUE(WaitUntil([&] { return arena->holds_on(block) == 1; })) << arena->holds_on(block);
  block.mutable_data()[12345] = std::byte{9};
  {
    std::lock_guard<std::mutex> lock(kept->mu);
    EXPECT_EQ(kept->view.data()[12345], std::byte{9});  // the engine reads the same pages
    kept->view = Buffer();
  }
  EXPECT_EQ(arena->holds_on(block), 0u);  // let go: the caller may write it freely

  // An echo hands the argument back in place: a reference to the client's own block,
  // which the result keeps (the same pages: a byte written there shows in the result).
  {
    Buffer echoed = *arena->Allocate(1 << 20);
    std::memset(echoed.mutable_data(), 5, echoed.size());
    before = GlobalStats().Snapshot();
    Result e = client.apply("echo", Tensor(DType::kUInt8, Shape{echoed.size()}, echoed)).get();
    ASSERT_TRUE(e.ok()) << Why(e);
    EXPECT_TRUE(e.value().InSharedMemory());
    EXPECT_EQ(GlobalStats().Snapshot().shared_refs_sent, before.shared_refs_sent + 2);
    EXPECT_EQ(GlobalStats().Snapshot().shared_bytes_copied, before.shared_bytes_copied);
    Buffer got = e.value().TensorBytes();
    ASSERT_EQ(got.size(), echoed.size());
    EXPECT_EQ(got.data()[got.size() / 2], std::byte{5});
    std::memset(echoed.mutable_data(), 6, echoed.size());
    EXPECT_EQ(got.data()[got.size() / 2], std::byte{6});
    // An ordinary argument's copy in the arena comes back the same way and stays
    // allocated while the result lives.
    size_t used = arena->used();
    std::vector<uint8_t> plain(1 << 20, 7);
    Result p = client.apply("echo", plain).get();
    ASSERT_TRUE(p.ok()) << Why(p);
    EXPECT_TRUE(p.value().InSharedMemory());
    EXPECT_EQ(p.as<std::vector<uint8_t>>(), plain);
    EXPECT_EQ(arena->used(), used + plain.size());
    p = Result();
    // The engine's view of the argument holds the block too, until the engine lets go
    // of the call (just after its reply).
    EXPECT_TRUE(WaitUntil([&] { return arena->used() == used; }));
  }

  // A function that writes into its argument gets a copy of its own: the client's bytes
  // stay as they were (the arena is mapped read-only in the engine).
  {
    Buffer doubles = *arena->Allocate(1 << 20);
    std::vector<double> ones(doubles.size() / 8, 1.0);
    std::memcpy(doubles.mutable_data(), ones.data(), doubles.size());
    Result twice = client
                       .apply("twice", Tensor(DType::kFloat64, Shape{ones.size()}, doubles))
                       .get();
    ASSERT_TRUE(twice.ok()) << Why(twice);
    EXPECT_EQ(twice.as<std::vector<double>>(), std::vector<double>(ones.size(), 2.0));
    EXPECT_EQ(std::memcmp(doubles.data(), ones.data(), doubles.size()), 0);
  }

  // Ordinary memory: one copy into the arena, released once the call is answered.
  std::vector<double> values(1 << 20, 0.5);
  before = GlobalStats().Snapshot();
  r = client.apply("sum", values).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_DOUBLE_EQ(r.as<double>(), 0.5 * (1 << 20));
  EXPECT_EQ(GlobalStats().Snapshot().shared_bytes_copied,
            before.shared_bytes_copied + values.size() * 8);
  // Only `block`: the copies went back once the engine let go of each call.
  EXPECT_TRUE(WaitUntil([&] { return arena->used() == 8u << 20; })) << arena->used();
  engine.Stop();
}

TEST(SharedCallTest, AnEngineWithoutSharedMemoryGetsFrames) {
  EngineOptions eo;
  eo.builtins = true;
  eo.shared_memory = false;
  Engine engine(eo);
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  Client client(engine.last_endpoint());
  std::vector<double> values(1 << 16, 2.0);
  Result r = client.apply("sum", values).get();  // the hello has had its chance by now
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_DOUBLE_EQ(r.as<double>(), 2.0 * (1 << 16));
  EXPECT_FALSE(client.shares_memory());
  engine.Stop();
}

TEST(SharedCallTest, ATimedOutCallKeepsItsBlockUntilTheLateReply) {
  Engine engine;
  engine.DefRaw("slow", [](const Call& call, ValueWriter& result) {
    std::this_thread::sleep_for(milliseconds(300));
    result.Int(static_cast<int64_t>(call.arg(0).TensorBytes().size()));
  });
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  auto arena = SharedArena::Create(16 << 20);
  ClientOptions co = Sharing(arena);
  Client client(engine.last_endpoint(), co);
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); }));
  // The client gives up after 50 ms; the engine still reads the argument in place.
  std::vector<double> payload(1 << 16, 1.0);
  Result r = client.apply_for(milliseconds(50), "slow", payload).get();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(arena->used(), payload.size() * 8);  // not reused under the running call
  // The next call takes the late reply off the socket (the client has no thread of its
  // own), and that frees the block.
  std::this_thread::sleep_for(milliseconds(400));
  EXPECT_TRUE(client.apply("slow", std::vector<double>{1.0}).get().ok());
  EXPECT_EQ(client.counters().late, 1u);
  EXPECT_EQ(arena->used(), 0u);
  engine.Stop();
}

TEST(SharedCallTest, AnEngineThatCannotTakeReferencesFailsTheCallSayingWhyAndFramesFollow) {
  std::string url = "tcp://127.0.0.1:" + std::to_string(testing::FreeTcpPort());
  auto arena = SharedArena::Create(16 << 20);
  ClientOptions co = Sharing(arena, milliseconds(10000));
  std::vector<double> values(1 << 16, 1.0);
  auto first = std::make_unique<Engine>(EngineOptions{.builtins = true});
  first->Bind(url);
  first->Start();
  Client client(url, co);
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); }));
  ASSERT_TRUE(client.apply("sum", values).get().ok());
  first.reset();  // another engine, without shared memory, takes over the endpoint
  EngineOptions eo;
  eo.builtins = true;
  eo.shared_memory = false;
  Engine second(eo);
  second.Bind(url);
  second.Start();
  // Small calls until the client has noticed the new connection (the one in flight
  // when it changed fails with BrokerLost).
  ASSERT_TRUE(WaitUntil([&] { return client.apply("add", 1, 2).get().ok(); }));
  // The call that still carried a reference fails at once with the engine's reason (not
  // at its timeout); the client sends frames from then on.
  auto started = std::chrono::steady_clock::now();
  Result r = client.apply("sum", values).get();
  ASSERT_FALSE(r.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - started, milliseconds(5000));
  EXPECT_THAT(Why(r), HasSubstr("does not accept"));
  EXPECT_FALSE(client.shares_memory());
  r = client.apply("sum", values).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_DOUBLE_EQ(r.as<double>(), 1.0 * values.size());
}

TEST(SharedCallTest, TheEngineProgramInAnotherProcessReadsTheClientsArena) {
  std::string url = "tcp://127.0.0.1:" + std::to_string(testing::FreeTcpPort());
  testing::ToolProcess engine({"engine", "--bind", url, "--builtins"});
  auto arena = SharedArena::Create(64 << 20);
  ClientOptions co = Sharing(arena, milliseconds(10000));
  Client client(url, co);
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); }, milliseconds(20000)));
  Buffer block = *arena->Allocate(32 << 20);
  std::memset(block.mutable_data(), 0, block.size());
  block.mutable_data()[block.size() - 1] = std::byte{3};
  StatsSnapshot before = GlobalStats().Snapshot();
  Result r = client.apply("nbytes", Bytes(block)).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_EQ(r.as<int64_t>(), 32 << 20);
  r = client.apply("sum", Bytes(block)).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_DOUBLE_EQ(r.as<double>(), 3.0);
  StatsSnapshot after = GlobalStats().Snapshot();
  EXPECT_EQ(after.shared_refs_sent, before.shared_refs_sent + 2);
  EXPECT_EQ(after.shared_bytes_copied, before.shared_bytes_copied);
}

// A broker, one engine behind it and a client that shares memory with the broker.
struct BrokeredCall {
  explicit BrokeredCall(EngineOptions eo, BrokerOptions bo = {},
                        std::optional<Signer> signer = std::nullopt)
      : broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", std::move(bo)), engine([&] {
          eo.builtins = true;
          eo.signer = signer;
          return eo;
        }()) {
    broker.Start();
    engine.Connect(broker.backend_endpoint());
    engine.Start();
    ClientOptions co;
    co.shared_arena = arena;
    co.shared_memory = true;
    co.timeout = milliseconds(20000);
    co.signer = signer;
    client = std::make_unique<Client>(broker.frontend_endpoint(), co);
  }
  ~BrokeredCall() {
    client.reset();
    engine.Stop();
    broker.Stop();
  }
  std::shared_ptr<SharedArena> arena = SharedArena::Create(64 << 20);
  Broker broker;
  Engine engine;
  std::unique_ptr<Client> client;
};

// 16 MiB in a block of `arena`, every byte 1 but the last, 3 (sum: 16 Mi + 2).
Buffer SumBlock(SharedArena& arena) {
  Buffer block = *arena.Allocate(16 << 20);
  std::memset(block.mutable_data(), 1, block.size());
  block.mutable_data()[block.size() - 1] = std::byte{3};
  return block;
}
constexpr double kSumBlockSum = (16 << 20) + 2.0;

TEST(SharedBrokerTest, ReferencesPassThroughTheBrokerToAnEngineOnThisHostAsTheyAre) {
  BrokeredCall c(EngineOptions{});
  ASSERT_TRUE(WaitUntil([&] { return c.client->shares_memory(); })) << "no hello from the broker";
  Buffer block = SumBlock(*c.arena);
  StatsSnapshot before = GlobalStats().Snapshot();
  Result r = c.client->apply("sum", Bytes(block)).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_DOUBLE_EQ(r.as<double>(), kSumBlockSum);
  StatsSnapshot after = GlobalStats().Snapshot();
  EXPECT_EQ(after.shared_refs_sent, before.shared_refs_sent + 1);
  EXPECT_EQ(after.shared_refs_received, before.shared_refs_received + 1);  // the engine's
  EXPECT_EQ(after.shared_bytes_copied, before.shared_bytes_copied);
  EXPECT_EQ(c.broker.counters().materialized, 0u);
}

TEST(SharedBrokerTest, AnEngineThatDoesNotShareTheHostGetsTheBytesAsFramesMaterializedOnce) {
  BrokeredCall c(EngineOptions{.shared_memory = false});
  ASSERT_TRUE(WaitUntil([&] { return c.client->shares_memory(); }));
  Buffer block = SumBlock(*c.arena);
  for (int i = 0; i < 2; ++i) {
    Result r = c.client->apply("sum", Bytes(block)).get();
    ASSERT_TRUE(r.ok()) << Why(r);
    EXPECT_DOUBLE_EQ(r.as<double>(), kSumBlockSum);
  }
  EXPECT_EQ(c.broker.counters().materialized, 2u);
  EXPECT_EQ(c.broker.counters().materialized_bytes, uint64_t{2} * block.size());
  EXPECT_TRUE(c.client->shares_memory());  // the next call still goes by reference
  // Calls without references pass as they are.
  Result small = c.client->apply("add", 1, 2).get();
  ASSERT_TRUE(small.ok()) << Why(small);
  EXPECT_EQ(c.broker.counters().materialized, 2u);
}

TEST(SharedBrokerTest, ASignedCallIsMaterializedAndSignedAgainByABrokerWithTheKey) {
  Signer signer("shared-broker-key");
  BrokerOptions bo;
  bo.signer = signer;
  BrokeredCall c(EngineOptions{.shared_memory = false}, bo, signer);
  ASSERT_TRUE(WaitUntil([&] { return c.client->shares_memory(); }));
  Buffer block = SumBlock(*c.arena);
  Result r = c.client->apply("sum", Bytes(block)).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_DOUBLE_EQ(r.as<double>(), kSumBlockSum);
  EXPECT_EQ(c.broker.counters().materialized, 1u);
}

TEST(SharedBrokerTest, AClientThatSignsTakesNoUnsignedHelloAndSendsFrames) {
  Signer signer("shared-broker-key");
  // The broker holds no key: its hello is unsigned, and a client that signs ignores it.
  BrokeredCall c(EngineOptions{.shared_memory = false}, BrokerOptions{}, signer);
  ASSERT_TRUE(c.client->apply("add", 1, 2).get().ok());  // the hello had its chance
  Buffer block = SumBlock(*c.arena);
  EXPECT_FALSE(c.client->shares_memory());
  Result r = c.client->apply("sum", Bytes(block)).get();
  ASSERT_TRUE(r.ok()) << Why(r);  // frames, then
  EXPECT_EQ(c.broker.counters().materialized, 0u);
}

TEST(SharedBrokerTest, AnEngineOnAnotherHostGetsTheArgumentsOfACallerThatSharesMemory) {
  if (!testing::CanUnshareNetwork()) GTEST_SKIP() << "no network namespaces for this user";
  // The engine program runs in a network namespace of its own: its hello names another
  // namespace, and it could not reach the client's arena (an abstract socket) anyway.
  std::string backend = absl::StrCat("ipc:///tmp/zerocan-test-netns-", getpid());
  Broker broker("tcp://127.0.0.1:*", backend);
  broker.Start();
  testing::ToolProcess engine({"engine", "--connect", backend, "--builtins"},
                              /*own_network_namespace=*/true);
  ASSERT_TRUE(WaitUntil([&] { return broker.counters().engines_live == 1; },
                        milliseconds(20000)));
  auto arena = SharedArena::Create(64 << 20);
  ClientOptions co = Sharing(arena, milliseconds(20000));
  Client client(broker.frontend_endpoint(), co);
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); }));
  Buffer block = SumBlock(*arena);
  StatsSnapshot before = GlobalStats().Snapshot();
  Result r = client.apply("sum", Bytes(block)).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_DOUBLE_EQ(r.as<double>(), kSumBlockSum);
  EXPECT_EQ(GlobalStats().Snapshot().shared_refs_sent, before.shared_refs_sent + 1);
  EXPECT_EQ(broker.counters().materialized, 1u);
  EXPECT_EQ(broker.counters().materialized_bytes, block.size());
}

TEST(SharedCallTest, TheEngineLetsGoOfAnArgumentsBlockBeforeItAnswers) {
  // A function that reads its argument and keeps no view, run by a worker and on the
  // I/O thread: once the caller has the reply, nothing holds the block.
  auto size_of = [](const Call& call, ValueWriter& result) {
    result.Int(static_cast<int64_t>(call.arg(0).TensorBytes().size()));
  };
  Engine engine;
  engine.DefRaw("on_worker", size_of);
  engine.DefRaw("on_io_thread", size_of, FunctionOptions{.inline_execution = true});
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  auto arena = SharedArena::Create(16 << 20);
  Client client(engine.last_endpoint(), Sharing(arena, milliseconds(10000)));
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); }));
  Buffer block = *arena->Allocate(1 << 20);
  // Many blocks per call: releasing the call's leases takes long enough that an engine
  // which released them after its reply would be caught at it.
  std::vector<Buffer> blocks;
  for (int i = 0; i < 256; ++i) blocks.push_back(*arena->Allocate(4096));
  std::vector<Tensor> args;
  for (const Buffer& b : blocks) args.push_back(Bytes(b));
  for (const char* function : {"on_worker", "on_io_thread"}) {
    for (int i = 0; i < 300; ++i) {
      Result r = client.apply(function, Bytes(block), args).get();
      ASSERT_TRUE(r.ok()) << Why(r);
      ASSERT_TRUE(r.value().AsInt() == 1 << 20);
      ASSERT_EQ(arena->holds_on(block), 0u) << function << ", call " << i;
      ASSERT_EQ(arena->holds_on(blocks.back()), 0u) << function << ", call " << i;
    }
  }
  EXPECT_GT(GlobalStats().Snapshot().shared_refs_received, 0u);
}

TEST(SharedCallTest, ATrackerIsDoneWhenTheCallIsOverAndNoReceiverHoldsItsBlocks) {
  auto kept = std::make_shared<Kept>();
  Engine engine;
  engine.DefRaw("keep", [kept](const Call& call, ValueWriter& result) {
    std::lock_guard<std::mutex> lock(kept->mu);
    kept->view = call.arg(0).TensorBytes();
    result.Int(static_cast<int64_t>(kept->view.size()));
  });
  engine.DefRaw("echo", [](const Call& call, ValueWriter& out) { out.Copy(call.arg(0)); });
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  auto arena = SharedArena::Create(16 << 20);
  Client client(engine.last_endpoint(), Sharing(arena, milliseconds(10000)));
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); }));
  Buffer block = *arena->Allocate(1 << 20);

  // The engine keeps its view past the reply: the block is still read.
  ResultFuture f = client.apply("keep", Bytes(block));
  Result r = f.get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_FALSE(f.tracker().WaitFor(milliseconds(50)));
  EXPECT_FALSE(f.tracker().done());
  {
    std::lock_guard<std::mutex> lock(kept->mu);
    kept->view = Buffer();
  }
  EXPECT_TRUE(f.tracker().WaitFor(milliseconds(5000)));

  // Waiting on the tracker alone receives the reply (no get() first).
  ResultFuture g = client.apply("keep", Bytes(block));
  EXPECT_TRUE(WaitUntil([&] {
    std::lock_guard<std::mutex> lock(kept->mu);
    return !kept->view.empty();
  }));
  {
    std::lock_guard<std::mutex> lock(kept->mu);
    kept->view = Buffer();
  }
  EXPECT_TRUE(g.tracker().WaitFor(milliseconds(5000)));
  EXPECT_TRUE(g.ready());

  // A result that hands the block back in place reads it while it lives.
  ResultFuture e = client.apply("echo", Bytes(block));
  Result echoed = e.get();
  ASSERT_TRUE(echoed.ok()) << Why(echoed);
  ASSERT_TRUE(echoed.value().InSharedMemory());
  EXPECT_FALSE(e.tracker().done());
  echoed = Result();
  EXPECT_TRUE(e.tracker().WaitFor(milliseconds(5000)));
}

TEST(SharedCallTest, TheTrackerOfACallGivenUpWaitsForItsLateReplyAndReceivesIt) {
  Engine engine;
  engine.DefRaw("slow", [](const Call& call, ValueWriter& out) {
    Buffer bytes = call.arg(0).TensorBytes();
    std::this_thread::sleep_for(milliseconds(300));
    out.UInt(bytes.size());
  });
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  auto arena = SharedArena::Create(4 << 20);
  Client client(engine.last_endpoint(), Sharing(arena, milliseconds(10000)));
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); }));
  Buffer block = *arena->Allocate(1 << 20);
  ResultFuture f = client.apply_for(milliseconds(50), "slow", Bytes(block));
  Result r = f.get();
  EXPECT_FALSE(r.ok());  // given up after 50 ms; the engine still reads the block
  auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(f.tracker().done());
  // Waiting receives the late reply (about 250 ms later), which lets the block go.
  EXPECT_TRUE(f.tracker().WaitFor(milliseconds(5000)));
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(3000));
  EXPECT_EQ(arena->holds_on(block), 0u);
}

TEST(SharedCallTest, AResultPassedOnToAnotherCallKeepsTheBlockItNames) {
  Engine engine;
  engine.DefRaw("echo", [](const Call& call, ValueWriter& out) { out.Copy(call.arg(0)); });
  engine.DefRaw("slow_sum", [](const Call& call, ValueWriter& out) {
    std::this_thread::sleep_for(milliseconds(200));
    Buffer bytes = call.arg(0).TensorBytes();
    uint64_t sum = 0;
    for (size_t i = 0; i < bytes.size(); ++i) sum += static_cast<uint8_t>(bytes.data()[i]);
    out.UInt(sum);
  });
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  auto arena = SharedArena::Create(4 << 20);
  ClientOptions co = Sharing(arena, milliseconds(10000));
  Client client(engine.last_endpoint(), co);
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); }));
  ResultFuture pending;
  {
    std::vector<uint8_t> ones(1 << 20, 1);
    Result echoed = client.apply("echo", ones).get();  // copied into the arena, handed back
    ASSERT_TRUE(echoed.ok()) << Why(echoed);
    ASSERT_TRUE(echoed.value().InSharedMemory());
    pending = client.apply("slow_sum", echoed.value());  // the same block, as it is
  }  // the result is gone; the call in flight still holds the block
  Buffer other = *arena->Allocate(1 << 20);  // would land on a freed block
  std::memset(other.mutable_data(), 7, other.size());
  Result r = pending.get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_EQ(r.as<uint64_t>(), uint64_t{1} << 20);
}

// An engine of its own making: answers the client's hello from this host, then answers
// the call with a result referring to bytes of the client's arena the call did not pass.
TEST(SharedCallTest, AResultReferringToMemoryTheCallDidNotPassFailsTheCall) {
  zmq::context_t context(1);
  zmq::socket_t fake(context, zmq::socket_type::router);
  fake.set(zmq::sockopt::linger, 0);
  fake.bind("tcp://127.0.0.1:*");
  auto arena = SharedArena::Create(4 << 20);
  ClientOptions co = Sharing(arena, milliseconds(5000));
  Client client(fake.get(zmq::sockopt::last_endpoint), co);
  Buffer secret = *arena->Allocate(4096);  // the caller's, never passed
  Buffer argument = *arena->Allocate(1 << 16);
  auto answer = [&](const std::function<void(ReceivedMessage&&)>& reply) {
    zmq::pollitem_t item{fake.handle(), 0, ZMQ_POLLIN, 0};
    ASSERT_EQ(zmq::poll(&item, 1, std::chrono::milliseconds(5000)), 1);
    std::optional<ReceivedMessage> m = Receive(fake, DecodeLimits{}, zmq::recv_flags::none, true);
    ASSERT_TRUE(m.has_value());
    reply(std::move(*m));
  };
  answer([&](ReceivedMessage&& hello) {  // the hello: answered from this host
    EnvelopeWriter w;
    w.SetHeader(Header{1, 2, 1, 0});
    w.SetHello("fake", "engine", {}, &HostIdentity::This());
    Send(fake, w.Finish(), hello.routing);
  });
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); }));
  ResultFuture f = client.apply("nbytes", Bytes(argument));
  answer([&](ReceivedMessage&& call) {
    uint64_t id = Message::Decode(ReceivedMessage{{}, call.frames}, Accepting()).message_id();
    capnp::MallocMessageBuilder builder;
    auto env = builder.initRoot<wire::Envelope>();
    env.setVersion(kProtocolVersion);
    env.setMessageId(9);
    auto result = env.getBody().initResult();
    result.setCallId(id);
    auto ref = result.initOk().initBytes().initShared();
    ref.setArena(arena->name());
    ref.setOffset(arena->Find(secret)->offset);
    ref.setLength(secret.size());
    kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
    Buffer envelope = Buffer::CopyOf(words.begin(), words.size() * sizeof(capnp::word));
    Send(fake, Outgoing(envelope, {}), call.routing);
  });
  Result r = f.get();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(Why(r), HasSubstr("refers to shared memory the call did not pass"));
}

TEST(SharedBrokerTest, ACallTooLargeToRewriteForAnotherHostFailsSayingWhy) {
  BrokerOptions bo;
  bo.limits.max_message_bytes = 1 << 20;
  BrokeredCall c(EngineOptions{.shared_memory = false}, bo);
  ASSERT_TRUE(WaitUntil([&] { return c.client->shares_memory(); }));
  Buffer block = SumBlock(*c.arena);  // 16 MiB
  Result r = c.client->apply("sum", Bytes(block)).get();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(Why(r), HasSubstr("more than one message may carry"));
  EXPECT_EQ(c.broker.counters().materialized, 0u);
}

TEST(SharedBrokerTest, CallsWithReferencesGoToAnEngineOnThisHostWhenThereIsOne) {
  BrokeredCall c(EngineOptions{.shared_memory = false});  // elsewhere, as far as it says
  EngineOptions eo;
  eo.builtins = true;
  Engine local(eo);
  local.Connect(c.broker.backend_endpoint());
  local.Start();
  ASSERT_TRUE(WaitUntil([&] { return c.broker.counters().engines_live == 2; }));
  ASSERT_TRUE(WaitUntil([&] { return c.client->shares_memory(); }));
  Buffer block = SumBlock(*c.arena);
  std::vector<ResultFuture> calls;
  for (int i = 0; i < 6; ++i) calls.push_back(c.client->apply("sum", Bytes(block)));
  for (ResultFuture& f : calls) {
    Result r = f.get();
    ASSERT_TRUE(r.ok()) << Why(r);
    EXPECT_DOUBLE_EQ(r.as<double>(), kSumBlockSum);
  }
  EXPECT_EQ(c.broker.counters().materialized, 0u);  // none rewritten
  local.Stop();
}

}  // namespace
}  // namespace zerocan
