// CurveZMQ through libzmq: keys, key files, and a call over tcp that only a client
// knowing the server's public key gets through.
#include "zerocan/transport/zmq.h"
#include "zerocan/curve.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "tests/safety_util.h"

namespace zerocan {
namespace {

using testing::MakeCall;
using testing::ReceiveWithin;

class CurveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CurveAvailable()) GTEST_SKIP() << "libzmq built without CurveZMQ";
  }
  void TearDown() override {
    if (!path_.empty()) std::remove(path_.c_str());
  }
  std::string TempPath() {
    // The pid too: two runs of the suite on one machine must not share files.
    path_ = ::testing::TempDir() + "zerocan_curve_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    return path_;
  }
  std::string path_;
};

TEST_F(CurveTest, KeyPairAndPublicKeyAgree) {
  CurveKeyPair keys = GenerateCurveKeyPair();
  EXPECT_EQ(keys.public_key.size(), 40u);
  EXPECT_EQ(keys.secret_key.size(), 40u);
  EXPECT_EQ(CurvePublicKey(keys.secret_key), keys.public_key);
  EXPECT_THROW(CurvePublicKey("short"), Error);
}

TEST_F(CurveTest, KeyFileRoundTrip) {
  CurveKeyPair keys = GenerateCurveKeyPair();
  std::string path = TempPath();
  WriteCurveKeyFile(path, keys);
  CurveKeyPair read = ReadCurveKeyFile(path);
  EXPECT_EQ(read.public_key, keys.public_key);
  EXPECT_EQ(read.secret_key, keys.secret_key);
  std::ofstream(path, std::ios::trunc) << keys.secret_key << "\n";  // bare secret key
  EXPECT_EQ(ReadCurveKeyFile(path).public_key, keys.public_key);
}

// Z85 has '{' in its alphabet (about one key in 85 starts with it): a key file holding
// such a bare secret key is a key, not malformed JSON.
TEST_F(CurveTest, BareKeyStartingWithABraceIsAKey) {
  CurveKeyPair brace;
  for (int i = 0; i < 100000 && brace.secret_key.empty(); ++i) {
    CurveKeyPair k = GenerateCurveKeyPair();
    if (k.secret_key.front() == '{') brace = k;
  }
  ASSERT_FALSE(brace.secret_key.empty());
  std::string path = TempPath();
  std::ofstream(path, std::ios::trunc) << brace.secret_key << "\n";
  EXPECT_EQ(ReadCurveKeyFile(path).public_key, brace.public_key);
}

TEST_F(CurveTest, BadKeyFilesAreRejected) {
  std::string path = TempPath();
  CurveKeyPair a = GenerateCurveKeyPair(), b = GenerateCurveKeyPair();
  for (std::string content :
       {std::string("not a key"), std::string("{}"), std::string(R"({"secret_key": 5})"),
        "{\"public_key\": \"" + b.public_key + "\", \"secret_key\": \"" + a.secret_key + "\"}"}) {
    std::ofstream(path, std::ios::trunc) << content;
    try {
      ReadCurveKeyFile(path);
      ADD_FAILURE() << "accepted: " << content;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
}

TEST_F(CurveTest, EncryptedCallOverTcpOnlyWithTheServerKey) {
  CurveKeyPair server_keys = GenerateCurveKeyPair();
  testing::ContextWithBoundedTerm context;
  zmq::socket_t server(context, zmq::socket_type::router);
  server.set(zmq::sockopt::linger, 0);
  ConfigureCurveServer(server, server_keys);
  server.bind("tcp://127.0.0.1:*");
  std::string endpoint = server.get(zmq::sockopt::last_endpoint);

  auto client = [&](auto configure, bool must_send) {
    auto socket = std::make_unique<zmq::socket_t>(context, zmq::socket_type::dealer);
    socket->set(zmq::sockopt::linger, 0);
    // A DEALER whose handshake failed may have no pipe to queue into until it dials
    // again: a send without a bound could wait for that forever on a loaded machine.
    socket->set(zmq::sockopt::sndtimeo, 2000);
    configure(*socket);
    socket->connect(endpoint);
    try {
      Send(*socket, MakeCall(1, 1));
    } catch (const TransportError& e) {
      if (must_send) ADD_FAILURE() << e.what();
    }
    return socket;
  };
  // A client without Curve and one with a wrong server key never get a message through.
  auto plain = client([](zmq::socket_t&) {}, false);
  auto wrong = client(
      [&](zmq::socket_t& s) {
        ConfigureCurveClient(s, GenerateCurveKeyPair(), GenerateCurveKeyPair().public_key);
      },
      false);
  EXPECT_FALSE(ReceiveWithin(server, true, std::chrono::milliseconds(300)).has_value());

  auto good = client(
      [&](zmq::socket_t& s) {
        ConfigureCurveClient(s, GenerateCurveKeyPair(), server_keys.public_key);
      },
      true);
  auto received = ReceiveWithin(server, true, std::chrono::seconds(10));
  ASSERT_TRUE(received.has_value());
  Message message = Message::Decode(std::move(*received));
  EXPECT_EQ(message.function(), "echo");
  EXPECT_EQ(message.arg(2).AsTensor().size(), 100u);
  EXPECT_FALSE(ReceiveWithin(server, true, std::chrono::milliseconds(100)).has_value());
}

}  // namespace
}  // namespace zerocan
