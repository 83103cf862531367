// Helpers shared by the zerocan unit tests: one-value round trips, frames placed at
// chosen (mis)alignments, socket pairs, and a walk that touches every part of a
// decoded message (used by the bit-flip and truncation tests to prove "no crash").
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <thread>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <zmq.hpp>

#include "zerocan/transport/zmq.h"
#include "zerocan/generated.h"
#include "zerocan/zerocan.h"
#include "internal/testing.h"

namespace zerocan::testing {

// Polls `done` until it holds or `limit` passes: for what other threads and processes
// do on their own time.
inline bool WaitUntil(const std::function<bool()>& done,
                      std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// The error a failed Result carries, as text ("" when it succeeded).
inline std::string Why(const Result& r) {
  try {
    r.ThrowIfError();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// A policy that ignores ZEROCAN_INLINE_THRESHOLD, so tests do not depend on the
// environment they run in.
inline Policy FixedPolicy(size_t threshold = kDefaultInlineThreshold, bool pack = true) {
  Policy p;
  p.inline_threshold = threshold;
  p.pack_integers = pack;
  return p;
}

// Encodes `value` as the single argument of apply("f").
template <class T>
Outgoing EncodeArg(T&& value, const Policy& policy = FixedPolicy(),
                   const Registry* registry = nullptr) {
  EnvelopeWriter w(policy, registry);
  w.StartApply("f", 1, 0).arg(0).Write(std::forward<T>(value));
  return w.Finish();
}

inline Message DecodeOutgoing(Outgoing&& out, const DecodeLimits& limits = {}) {
  return Message::Decode(LoopbackFrames(std::move(out)), limits);
}

// Encodes `value` as apply("f", value), decodes it in process and converts the argument
// back to T. `value` is passed by reference so borrowed payloads outlive the message.
template <class T>
T RoundTrip(const T& value, const Policy& policy = FixedPolicy()) {
  Message m = DecodeOutgoing(EncodeArg(value, policy));
  return m.arg(0).template As<T>();
}

// A frame holding a copy of `bytes` whose first byte sits at an address that is
// `misalign` bytes past a 64-byte boundary. (Not counted as a library copy.)
inline Buffer FrameAt(const void* bytes, size_t size, size_t misalign) {
  auto* base = static_cast<std::byte*>(std::aligned_alloc(64, ((size + misalign) / 64 + 1) * 64));
  if (size != 0) std::memcpy(base + misalign, bytes, size);
  std::shared_ptr<std::byte> owner(base, [](std::byte* p) { std::free(p); });
  return Buffer(base + misalign, size, std::move(owner));
}
inline Buffer FrameAt(const Buffer& source, size_t misalign) {
  return FrameAt(source.data(), source.size(), misalign);
}
// An owned frame over a copy of `bytes` (8-byte aligned).
inline Buffer Frame(std::string_view bytes) { return FrameAt(bytes.data(), bytes.size(), 0); }
inline Buffer Frame(const void* bytes, size_t size) { return FrameAt(bytes, size, 0); }

inline std::vector<std::byte> Bytes(const Buffer& b) {
  return std::vector<std::byte>(b.data(), b.data() + b.size());
}
inline std::string Str(const Buffer& b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// True when [p, p + n) lies inside the frame's bytes.
inline bool PointsInto(const void* p, size_t n, const Buffer& frame) {
  auto* q = static_cast<const std::byte*>(p);
  return q >= frame.data() && q + n <= frame.data() + frame.size();
}

// Two connected DEALER sockets (DEALER writes and expects the empty delimiter, as
// zerocan::Send/Receive do).
// A libzmq context for tests whose peers fail CURVE handshakes. libzmq 4.3 can leave
// zmq_ctx_term waiting forever for a socket whose handshake failed while the machine was
// busy (zeromq/libzmq#2733; libzmq's own test_security_curve is skipped on Linux for it).
// Destruction terminates the context on another thread and waits at most `limit`; past
// that the context is left to that thread and a warning is printed, so a test about what
// arrives cannot hang on libzmq's shutdown. Declare it before the sockets, engines and
// brokers that use it, so that they are gone first.
class ContextWithBoundedTerm {
 public:
  explicit ContextWithBoundedTerm(std::chrono::seconds limit = std::chrono::seconds(20))
      : context_(std::make_unique<zmq::context_t>(1)), limit_(limit) {}
  ContextWithBoundedTerm(const ContextWithBoundedTerm&) = delete;
  ContextWithBoundedTerm& operator=(const ContextWithBoundedTerm&) = delete;
  ~ContextWithBoundedTerm() {
    auto done = std::make_shared<std::promise<void>>();
    std::future<void> finished = done->get_future();
    std::thread([context = std::move(context_), done]() mutable {
      context.reset();
      done->set_value();
    }).detach();
    if (finished.wait_for(limit_) == std::future_status::timeout) {
      std::fprintf(stderr, "[warning] libzmq did not terminate a context within %lld s "
                   "(zeromq/libzmq#2733); left to a thread\n",
                   static_cast<long long>(limit_.count()));
    }
  }
  zmq::context_t& get() { return *context_; }
  operator zmq::context_t&() { return *context_; }  // NOLINT: used where a context is

 private:
  std::unique_ptr<zmq::context_t> context_;
  std::chrono::seconds limit_;
};

// A tcp port on 127.0.0.1 that was free a moment ago.
inline int FreeTcpPort() {
  zmq::context_t ctx(1);
  zmq::socket_t s(ctx, zmq::socket_type::router);
  s.set(zmq::sockopt::linger, 0);
  s.bind("tcp://127.0.0.1:*");
  std::string endpoint = s.get(zmq::sockopt::last_endpoint);
  return std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
}

struct SocketPair {
  explicit SocketPair(const std::string& transport) : a(ctx, zmq::socket_type::dealer),
                                                      b(ctx, zmq::socket_type::dealer) {
    a.set(zmq::sockopt::linger, 0);
    b.set(zmq::sockopt::linger, 0);
    if (transport == "tcp") {
      a.bind("tcp://127.0.0.1:*");
    } else {
      static int counter = 0;
      a.bind("inproc://zerocan-test-" + std::to_string(counter++));
    }
    endpoint = a.get(zmq::sockopt::last_endpoint);
    b.connect(endpoint);
  }
  zmq::context_t ctx;
  zmq::socket_t a;
  zmq::socket_t b;
  std::string endpoint;
};

// Counts how many times an owner was destroyed: hand out `Make()` as a Buffer's
// keep-alive and check `count` after the send is done.
struct ReleaseCounter {
  std::shared_ptr<int> count = std::make_shared<int>(0);
  // An owned byte vector whose deleter bumps the count.
  std::shared_ptr<std::vector<std::byte>> Make(size_t size, std::byte fill = std::byte{0x5a}) {
    std::shared_ptr<int> c = count;
    return std::shared_ptr<std::vector<std::byte>>(new std::vector<std::byte>(size, fill),
                                                   [c](std::vector<std::byte>* v) {
                                                     ++*c;
                                                     delete v;
                                                   });
  }
};

inline Buffer BufferOf(const std::shared_ptr<std::vector<std::byte>>& v) {
  return Buffer(v->data(), v->size(), v);
}

// Touches every value, payload and accessor of a decoded message. A decoded message
// must never crash here, however its bytes were produced (Message::Decode has checked
// them); type mismatches are DecodeErrors, which we swallow.
inline void WalkValue(const Value& v, int depth = 0) {
  (void)v.Describe();
  switch (v.kind()) {
    case Kind::kNull: break;
    case Kind::kBool: (void)v.AsBool(); break;
    case Kind::kInt:
    case Kind::kUInt:
      try {
        (void)v.AsInt();
      } catch (const DecodeError&) {
      }
      try {
        (void)v.AsUInt();
      } catch (const DecodeError&) {
      }
      (void)v.AsDouble();
      break;
    case Kind::kFloat: (void)v.AsDouble(); break;
    case Kind::kText: {
      std::string copy(v.AsText());
      (void)copy;
      break;
    }
    case Kind::kBytes: {
      Buffer b = v.AsBytes();
      volatile uint8_t sum = 0;
      for (size_t i = 0; i < b.size(); ++i) sum = sum + static_cast<uint8_t>(b.data()[i]);
      (void)v.InFrame();
      break;
    }
    case Kind::kList:
      for (size_t i = 0; i < v.size(); ++i) WalkValue(v[i], depth + 1);
      break;
    case Kind::kMap:
      for (size_t i = 0; i < v.size(); ++i) {
        WalkValue(v.key(i), depth + 1);
        WalkValue(v.value(i), depth + 1);
      }
      (void)v.Find("x");
      break;
    case Kind::kTensor: {
      (void)v.dtype();
      (void)v.shape();
      (void)v.TensorIsZeroCopy();
      (void)v.InFrame();
      Tensor t = v.AsTensor();
      volatile uint8_t sum = 0;
      for (size_t i = 0; i < t.nbytes(); ++i) sum = sum + static_cast<uint8_t>(t.data().data()[i]);
      Buffer raw = v.TensorBytes();
      (void)raw;
      (void)t.Describe();
      break;
    }
    case Kind::kExtension:
      (void)v.extension_name();
      WalkValue(v.extension_state(), depth + 1);
      break;
  }
}

inline void WalkMessage(const Message& m) {
  (void)m.message_id();
  (void)m.session_id();
  (void)m.sequence();
  switch (m.body_kind()) {
    case BodyKind::kApply:
      (void)m.function();
      (void)m.timeout_ms();
      for (size_t i = 0; i < m.arg_count(); ++i) WalkValue(m.arg(i));
      for (size_t i = 0; i < m.kwarg_count(); ++i) {
        (void)m.kwarg_name(i);
        WalkValue(m.kwarg(i));
      }
      break;
    case BodyKind::kResult:
      (void)m.call_id();
      (void)m.engine_id();
      if (m.ok()) {
        WalkValue(m.result());
      } else {
        (void)m.error();
      }
      break;
    case BodyKind::kHello: {
      auto h = GeneratedEnvelope(m).getBody().getHello();
      for (auto f : h.getFunctions()) (void)f.size();
      (void)h.getPeerId().size();
      break;
    }
    case BodyKind::kHeartbeat: (void)GeneratedEnvelope(m).getBody().getHeartbeat().getPeerId().size(); break;
    case BodyKind::kStarted: (void)m.call_id(); break;
    case BodyKind::kCancel: (void)m.target_call_id(); break;
    case BodyKind::kCredit: (void)m.target_call_id(); (void)m.credit_items(); break;
    case BodyKind::kGoodbye:
    case BodyKind::kDraining:
    case BodyKind::kUnknown: break;
  }
}

// Decodes `frames` (copies of them; originals untouched) and walks the result. Returns
// true when it decoded, false when it raised DecodeError. Anything else fails the test.
inline bool DecodesOrRejects(const std::vector<std::vector<std::byte>>& frames) {
  ReceivedMessage r;
  for (const auto& f : frames) r.frames.push_back(FrameAt(f.data(), f.size(), 0));
  try {
    Message m = Message::Decode(std::move(r));
    WalkMessage(m);
    return true;
  } catch (const DecodeError&) {
    return false;
  }
}

}  // namespace zerocan::testing
