// SocketWait (src/transport/socket_wait.h): one poll(2) on libzmq's notification
// descriptors must still see every message, including one whose wake-up another call on
// the socket took.
#include "transport/socket_wait.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <zmq.hpp>

namespace zerocan::internal {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A DEALER `a` connected to a DEALER `b` over inproc.
struct Pair {
  Pair() : a(ctx, zmq::socket_type::dealer), b(ctx, zmq::socket_type::dealer) {
    static int n = 0;
    std::string url = "inproc://socket-wait-" + std::to_string(n++);
    b.bind(url);
    a.connect(url);
  }
  // Receives on `a` until nothing is left; how many messages it took.
  int DrainA() {
    int got = 0;
    zmq::message_t m;
    while (a.recv(m, zmq::recv_flags::dontwait)) ++got;
    return got;
  }
  zmq::context_t ctx;
  zmq::socket_t a, b;
};

std::vector<zmq::pollitem_t> ItemsOf(zmq::socket_t& socket, int fd = -1) {
  std::vector<zmq::pollitem_t> items = {{socket.handle(), 0, ZMQ_POLLIN, 0}};
  if (fd >= 0) items.push_back({nullptr, fd, ZMQ_POLLIN, 0});
  return items;
}

// A wait on `a` (and `fd`), after a receive on `a` found nothing: settled, as its owner
// would leave it.
SocketWait SettledWait(Pair& p, int fd = -1) {
  SocketWait wait(ItemsOf(p.a, fd));
  EXPECT_EQ(p.DrainA(), 0);
  wait.Settled(0);
  return wait;
}

// Wait returns at once with `a` readable, and `a` holds exactly one message.
void ExpectOneMessageAtOnce(SocketWait& wait, Pair& p) {
  auto t0 = Clock::now();
  EXPECT_EQ(wait.Wait(5s), 1);
  EXPECT_LT(Clock::now() - t0, 1s);
  EXPECT_TRUE(wait.readable(0));
  EXPECT_EQ(p.DrainA(), 1);
}

TEST(SocketWaitTest, SeesAMessageQueuedBeforeTheFirstWait) {
  Pair p;
  p.b.send(zmq::str_buffer("early"));
  std::this_thread::sleep_for(20ms);
  SocketWait wait(ItemsOf(p.a));
  ExpectOneMessageAtOnce(wait, p);
}

TEST(SocketWaitTest, WakesForAMessageThatArrivesWhileItSleeps) {
  Pair p;
  SocketWait wait = SettledWait(p);
  std::thread sender([&] {
    std::this_thread::sleep_for(50ms);
    p.b.send(zmq::str_buffer("late"));
  });
  auto t0 = Clock::now();
  int ready = wait.Wait(5s);
  sender.join();
  EXPECT_EQ(ready, 1);
  EXPECT_LT(Clock::now() - t0, 2s);
  EXPECT_TRUE(wait.readable(0));
  EXPECT_EQ(p.DrainA(), 1);
}

// libzmq signals a socket's descriptor once per batch of commands; a send processes
// pending commands (at most once a millisecond or so), taking the signal of a message
// that arrived before it without delivering the message. Touched makes the wait ask.
TEST(SocketWaitTest, ASendThatTookTheSignalIsAskedAboutAfterTouched) {
  Pair p;
  SocketWait wait = SettledWait(p);
  p.b.send(zmq::str_buffer("reply"));
  std::this_thread::sleep_for(20ms);  // past libzmq's command throttle
  p.a.send(zmq::str_buffer("request"));  // processes the reply's activation
  wait.Touched(0);
  ExpectOneMessageAtOnce(wait, p);
}

TEST(SocketWaitTest, TimesOutWhenNothingComes) {
  Pair p;
  SocketWait wait = SettledWait(p);
  auto t0 = Clock::now();
  EXPECT_EQ(wait.Wait(100ms), 0);
  EXPECT_GE(Clock::now() - t0, 90ms);
  EXPECT_FALSE(wait.readable(0));
}

TEST(SocketWaitTest, APlainDescriptorWakesIt) {
  Pair p;
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  SocketWait wait = SettledWait(p, fd);
  uint64_t one = 1;
  ASSERT_EQ(::write(fd, &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
  EXPECT_EQ(wait.Wait(5s), 1);
  EXPECT_TRUE(wait.readable(1));
  EXPECT_FALSE(wait.readable(0));
  ::close(fd);
}

}  // namespace
}  // namespace zerocan::internal
