// Registry: a third-party type with its own zero-copy buffer, registered in an instance
// (nothing global changes); unknown wire names decode to generic values that can be
// forwarded; duplicates are refused.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "zerocan/transport/zmq.h"
#include "test_support.h"
#include "zerocan/zerocan.h"

namespace zerocan {
namespace {

using ::testing::HasSubstr;
using testing::DecodeOutgoing;
using testing::EncodeArg;
using testing::FixedPolicy;
using testing::SocketPair;

// A type zerocan knows nothing about, owning its pixels through a shared_ptr.
struct Image {
  uint32_t width = 0;
  uint32_t height = 0;
  std::shared_ptr<std::vector<uint8_t>> pixels;
};

constexpr const char* kImageName = "test.Image";

void RegisterImage(Registry& registry) {
  registry.Register<Image>(
      kImageName,
      [](ValueWriter& state, const Image& image) {
        MapWriter map = state.Map(3);
        map.key(0).Text("width");
        map.value(0).Write(image.width);
        map.key(1).Text("height");
        map.value(1).Write(image.height);
        map.key(2).Text("pixels");
        // The pixels leave as a zero-copy payload; the shared_ptr keeps them alive until
        // libzmq releases the frame.
        map.value(2).Bytes(Buffer(reinterpret_cast<std::byte*>(image.pixels->data()),
                                  image.pixels->size(), image.pixels));
      },
      [](const Value& state) {
        Image image;
        image.width = state.Find("width")->As<uint32_t>();
        image.height = state.Find("height")->As<uint32_t>();
        Buffer bytes = state.Find("pixels")->AsBytes();
        auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
        image.pixels = std::make_shared<std::vector<uint8_t>>(p, p + bytes.size());
        return image;
      });
}

Image MakeImage(uint32_t w, uint32_t h, std::shared_ptr<int> released = nullptr) {
  Image image{w, h, nullptr};
  auto* v = new std::vector<uint8_t>(size_t{w} * h);
  for (size_t i = 0; i < v->size(); ++i) (*v)[i] = static_cast<uint8_t>(i * 31);
  image.pixels = std::shared_ptr<std::vector<uint8_t>>(v, [released](std::vector<uint8_t>* p) {
    if (released) ++*released;
    delete p;
  });
  return image;
}

TEST(RegistryTest, ThirdPartyTypeRoundTripsInProcess) {
  Registry registry;
  RegisterImage(registry);
  Image image = MakeImage(64, 48);
  Outgoing out = EncodeArg(image, FixedPolicy(1024), &registry);
  EXPECT_EQ(out.frame_count(), 2u);
  Message m = DecodeOutgoing(std::move(out));
  Value v = m.arg(0);
  ASSERT_EQ(v.kind(), Kind::kExtension);
  EXPECT_EQ(v.extension_name(), kImageName);
  EXPECT_EQ(v.extension_state().Find("pixels")->AsBytes().data(),
            reinterpret_cast<const std::byte*>(image.pixels->data()));
  Image back = v.As<Image>(registry);
  EXPECT_EQ(back.width, 64u);
  EXPECT_EQ(back.height, 48u);
  EXPECT_EQ(*back.pixels, *image.pixels);
}

TEST(RegistryTest, ThirdPartyZeroCopyOverInproc) {
  Registry registry;
  RegisterImage(registry);
  SocketPair pair("inproc");
  auto released = std::make_shared<int>(0);
  Tracker tracker;
  const uint8_t* address = nullptr;
  std::vector<uint8_t> expected;
  {
    Image image = MakeImage(256, 256, released);
    address = image.pixels->data();
    expected = *image.pixels;
    EnvelopeWriter w(FixedPolicy(1024), &registry);
    w.StartApply("show", 1, 0).arg(0).Write(image);
    tracker = Send(pair.a, w.Finish());
  }
  EXPECT_EQ(*released, 0) << "the frame keeps the pixels alive";
  {
    std::optional<ReceivedMessage> r = Receive(pair.b);
    ASSERT_TRUE(r.has_value());
    Message m = Message::Decode(std::move(*r));
    Buffer pixels = m.arg(0).extension_state().Find("pixels")->AsBytes();
    EXPECT_EQ(static_cast<const void*>(pixels.data()), static_cast<const void*>(address));
    Image back = m.arg(0).As<Image>(registry);
    EXPECT_EQ(*back.pixels, expected);
  }
  tracker.Wait();
  EXPECT_EQ(*released, 1);
}

TEST(RegistryTest, UnregisteredTypeIsEncodeError) {
  Image image = MakeImage(2, 2);
  // The default registry does not know Image: registering in an instance changed
  // nothing global.
  Registry registry;
  RegisterImage(registry);
  EXPECT_EQ(Registry::Default().FindName(kImageName), nullptr);
  try {
    (void)EncodeArg(image);
    FAIL();
  } catch (const EncodeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("no codec"));
  }
  Message m = DecodeOutgoing(EncodeArg(image, FixedPolicy(), &registry));
  EXPECT_THROW((void)m.arg(0).As<Image>(), Error);  // not in the default registry
}

TEST(RegistryTest, UnknownWireNameDecodesToGenericValueAndForwards) {
  Registry sender;
  RegisterImage(sender);
  Image image = MakeImage(100, 100);
  Message received = DecodeOutgoing(EncodeArg(image, FixedPolicy(1024), &sender));

  // A forwarder with an empty registry still reads it, as a generic value.
  Value v = received.arg(0);
  EXPECT_EQ(v.kind(), Kind::kExtension);
  EXPECT_EQ(v.extension_name(), kImageName);
  EXPECT_EQ(v.Describe(), std::string("extension ") + kImageName);
  EXPECT_EQ(v.extension_state().Find("width")->AsInt(), 100);

  // ...and forwards it without copying the pixels.
  Registry empty;
  EnvelopeWriter w(FixedPolicy(1024), &empty);
  w.StartApply("forward", 1, 0).arg(0).Copy(v);
  Outgoing forwarded = w.Finish();
  ASSERT_EQ(forwarded.payload_frames().size(), 1u);
  EXPECT_EQ(forwarded.payload_frames()[0].data(),
            reinterpret_cast<const std::byte*>(image.pixels->data()));
  Message final_hop = DecodeOutgoing(std::move(forwarded));
  Image back = final_hop.arg(0).As<Image>(sender);
  EXPECT_EQ(*back.pixels, *image.pixels);
  EXPECT_EQ(back.width, 100u);
}

TEST(RegistryTest, WrongExtensionOrKindIsTypeMismatch) {
  Registry registry;
  RegisterImage(registry);
  struct Other {};
  registry.Register<Other>(
      "test.Other", [](ValueWriter& w, const Other&) { w.Null(); },
      [](const Value&) { return Other{}; });
  Message m = DecodeOutgoing(EncodeArg(Other{}, FixedPolicy(), &registry));
  try {
    (void)m.arg(0).As<Image>(registry);
    FAIL();
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), DecodeError::Code::kTypeMismatch);
    EXPECT_THAT(e.what(), HasSubstr(kImageName));
    EXPECT_THAT(e.what(), HasSubstr("extension test.Other"));
  }
  Message i = DecodeOutgoing(EncodeArg(int64_t{1}));
  EXPECT_THROW((void)i.arg(0).As<Image>(registry), DecodeError);
}

TEST(RegistryTest, DuplicatesAreRefused) {
  Registry registry;
  RegisterImage(registry);
  EXPECT_EQ(registry.size(), 1u);
  // Same name again.
  try {
    RegisterImage(registry);
    FAIL();
  } catch (const EncodeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("already registered"));
  }
  // Same C++ type under another name.
  EXPECT_THROW(registry.Register<Image>(
                   "test.Image2", [](ValueWriter& w, const Image&) { w.Null(); },
                   [](const Value&) { return Image{}; }),
               EncodeError);
  // Another type under the same name.
  EXPECT_THROW(registry.Register<int>(
                   kImageName, [](ValueWriter& w, const int&) { w.Null(); },
                   [](const Value&) { return 0; }),
               EncodeError);
  // An empty name.
  struct Anonymous {};
  EXPECT_THROW(registry.Register<Anonymous>(
                   "", [](ValueWriter& w, const Anonymous&) { w.Null(); },
                   [](const Value&) { return Anonymous{}; }),
               EncodeError);
  EXPECT_EQ(registry.size(), 1u);
}

TEST(RegistryTest, CopiesAreIndependent) {
  Registry a;
  RegisterImage(a);
  Registry b = a;
  struct Extra {};
  b.Register<Extra>(
      "test.Extra", [](ValueWriter& w, const Extra&) { w.Null(); },
      [](const Value&) { return Extra{}; });
  EXPECT_EQ(a.size(), 1u);
  EXPECT_EQ(b.size(), 2u);
  EXPECT_NE(b.FindName(kImageName), nullptr);
  EXPECT_EQ(a.FindName("test.Extra"), nullptr);
  EXPECT_EQ(a.FindType(typeid(Image))->name, kImageName);
}

TEST(RegistryTest, ExtensionsNestInContainers) {
  Registry registry;
  RegisterImage(registry);
  std::vector<Image> images = {MakeImage(2, 2), MakeImage(40, 40)};
  EnvelopeWriter w(FixedPolicy(1024), &registry);
  w.StartApply("f", 1, 0).arg(0).Write(images);
  Message m = DecodeOutgoing(w.Finish());
  auto back = m.arg(0).As<std::vector<Image>>(registry);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(*back[1].pixels, *images[1].pixels);
  EXPECT_FALSE(m.arg(0)[0].extension_state().Find("pixels")->InFrame());
  EXPECT_TRUE(m.arg(0)[1].extension_state().Find("pixels")->InFrame());
}

}  // namespace
}  // namespace zerocan
