// CurveZMQ through Engine, Client and Broker options and the `zerocan engine|call|keygen`
// programs: a call over tcp gets through only with the right server key.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "zerocan/transport/zmq.h"
#include "test_support.h"
#include "tool_process.h"
#include "zerocan/broker.h"
#include "zerocan/client.h"
#include "zerocan/curve.h"
#include "zerocan/engine.h"

namespace zerocan {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using std::chrono::milliseconds;


class CurveProgramsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CurveAvailable()) GTEST_SKIP() << "libzmq built without CurveZMQ";
  }
  void TearDown() override {
    for (const std::string& p : paths_) std::remove(p.c_str());
  }
  std::string TempPath(const std::string& suffix) {
    paths_.push_back(::testing::TempDir() + "zerocan_curve_programs_" + std::to_string(getpid()) +
                     "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name() +
                     suffix);
    return paths_.back();
  }
  std::vector<std::string> paths_;
};

// Calls add(1, 2) on `url` and says whether 3 came back within `timeout`.
bool Adds(zmq::context_t& ctx, const std::string& url, const std::string& server_key,
          milliseconds timeout, std::optional<CurveKeyPair> own = std::nullopt) {
  ClientOptions options;
  options.context = &ctx;
  options.curve_server_key = server_key;
  options.curve = own;
  Client client(url, options);
  Result r;
  try {
    r = client.apply_for(timeout, "add", 1, 2).get();
  } catch (const TransportError&) {
    return false;  // refused at once: no handshake completed, so no peer took the call
  }
  if (!r.ok()) {
    EXPECT_THROW(r.ThrowIfError(), TimeoutError);
    return false;
  }
  return r.as<int>() == 3;
}

TEST_F(CurveProgramsTest, ReadCurvePublicKeyTakesAKeyOrAFile) {
  CurveKeyPair keys = GenerateCurveKeyPair();
  EXPECT_EQ(ReadCurvePublicKey(keys.public_key), keys.public_key);
  std::string path = TempPath(".key");
  WriteCurveKeyFile(path, keys);
  EXPECT_EQ(ReadCurvePublicKey(path), keys.public_key);
  EXPECT_THROW(ReadCurvePublicKey("/nonexistent/zerocan.key"), Error);
  EXPECT_THROW(ReadCurvePublicKey(std::string(40, '"')), Error);  // 40 chars, not Z85
}

TEST_F(CurveProgramsTest, EngineAndClientOverTcp) {
  testing::ContextWithBoundedTerm ctx;
  CurveKeyPair server = GenerateCurveKeyPair();
  EngineOptions eo;
  eo.builtins = true;
  eo.context = &ctx.get();
  eo.curve = server;
  Engine engine(eo);
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  std::string url = engine.last_endpoint();
  EXPECT_TRUE(Adds(ctx, url, server.public_key, milliseconds(10000)));
  EXPECT_TRUE(Adds(ctx, url, server.public_key, milliseconds(10000), GenerateCurveKeyPair()));
  EXPECT_FALSE(Adds(ctx, url, "", milliseconds(300)));  // plain text
  {  // After the failed handshake its calls fail (at once, or by timing out), never block.
    ClientOptions co;
    co.context = &ctx.get();
    Client plain(url, co);
    for (int i = 0; i < 3; ++i) {
      auto started = std::chrono::steady_clock::now();
      try {
        EXPECT_FALSE(plain.apply_for(milliseconds(200), "add", 1, 2).get().ok());
      } catch (const TransportError& e) {
        EXPECT_THAT(e.what(), ::testing::HasSubstr("handshake"));
      }
      EXPECT_LT(std::chrono::steady_clock::now() - started, milliseconds(2000));
      std::this_thread::sleep_for(milliseconds(50));
    }
  }
  EXPECT_FALSE(Adds(ctx, url, GenerateCurveKeyPair().public_key, milliseconds(300)));
  EXPECT_EQ(engine.counters().calls, 2u);
  engine.Stop();
}

TEST_F(CurveProgramsTest, ThroughABrokerWithCurve) {
  testing::ContextWithBoundedTerm ctx;
  CurveKeyPair broker_keys = GenerateCurveKeyPair();
  BrokerOptions bo;
  bo.context = &ctx.get();
  bo.heartbeat = milliseconds(100);
  bo.curve = broker_keys;
  Broker broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", bo);
  broker.Start();

  // An engine without the broker's key never registers.
  EngineOptions plain;
  plain.builtins = true;
  plain.context = &ctx.get();
  plain.heartbeat = milliseconds(100);
  plain.id = "plain";
  Engine outsider(plain);
  outsider.Connect(broker.backend_endpoint());
  outsider.Start();

  EngineOptions eo = plain;
  eo.id = "curve";
  eo.curve_server_key = broker_keys.public_key;  // own pair: a fresh one
  Engine engine(eo);
  engine.Connect(broker.backend_endpoint());
  engine.Start();
  for (int i = 0; i < 500 && broker.counters().engines_live < 1; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_EQ(broker.counters().engines_live, 1u);

  std::string url = broker.frontend_endpoint();
  EXPECT_TRUE(Adds(ctx, url, broker_keys.public_key, milliseconds(10000)));
  EXPECT_FALSE(Adds(ctx, url, "", milliseconds(300)));
  EXPECT_FALSE(Adds(ctx, url, GenerateCurveKeyPair().public_key, milliseconds(300)));
  EXPECT_EQ(broker.counters().engines_live, 1u);
  EXPECT_EQ(engine.counters().calls, 1u);
  EXPECT_EQ(outsider.counters().calls, 0u);
  engine.Stop();
  outsider.Stop();
  broker.Stop();
}

using Process = testing::ToolProcess;
using Output = testing::ToolOutput;
using testing::RunTool;

TEST_F(CurveProgramsTest, AnAllowListAdmitsOnlyTheClientKeysItLists) {
  testing::ContextWithBoundedTerm ctx;
  CurveKeyPair server = GenerateCurveKeyPair(), listed = GenerateCurveKeyPair(),
               other = GenerateCurveKeyPair();
  EngineOptions eo;
  eo.builtins = true;
  eo.context = &ctx.get();
  eo.curve = server;
  eo.curve_allowed_clients = {listed.public_key};
  Engine engine(eo);
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  std::string url = engine.last_endpoint();
  EXPECT_TRUE(Adds(ctx, url, server.public_key, milliseconds(10000), listed));
  EXPECT_FALSE(Adds(ctx, url, server.public_key, milliseconds(500), other));
  EXPECT_FALSE(Adds(ctx, url, server.public_key, milliseconds(500)));  // a fresh pair
  EXPECT_EQ(engine.counters().calls, 1u);
  // One handler per context: a second allow-list there is refused with a clear error.
  EXPECT_THROW(CurveAllowList(ctx, {listed.public_key}), Error);
  engine.Stop();
}

TEST_F(CurveProgramsTest, ABrokerAllowListCoversClientsAndEngines) {
  testing::ContextWithBoundedTerm ctx;
  CurveKeyPair broker_keys = GenerateCurveKeyPair(), client = GenerateCurveKeyPair(),
               engine_keys = GenerateCurveKeyPair(), stranger = GenerateCurveKeyPair();
  BrokerOptions bo;
  bo.context = &ctx.get();
  bo.heartbeat = milliseconds(100);
  bo.curve = broker_keys;
  bo.curve_allowed_clients = {client.public_key, engine_keys.public_key};
  Broker broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", bo);
  broker.Start();
  zmq::context_t engine_ctx(1);
  EngineOptions eo;
  eo.builtins = true;
  eo.context = &engine_ctx;
  eo.heartbeat = milliseconds(100);
  eo.curve = engine_keys;
  eo.curve_server_key = broker_keys.public_key;
  Engine engine(eo);
  engine.Connect(broker.backend_endpoint());
  engine.Start();
  EXPECT_TRUE(Adds(ctx, broker.frontend_endpoint(), broker_keys.public_key, milliseconds(10000),
                   client));
  EXPECT_FALSE(Adds(ctx, broker.frontend_endpoint(), broker_keys.public_key, milliseconds(500),
                    stranger));
  EXPECT_EQ(engine.counters().calls, 1u);
  engine.Stop();
  broker.Stop();
}

TEST_F(CurveProgramsTest, AllowListFilesNameTheLineThatIsWrong) {
  CurveKeyPair a = GenerateCurveKeyPair(), b = GenerateCurveKeyPair();
  std::string key_file = TempPath(".key");
  WriteCurveKeyFile(key_file, b);
  std::string list = TempPath(".allow");
  {
    std::ofstream out(list);
    out << "# clients\n" << a.public_key << "\n\n  " << key_file << "\n";
  }
  EXPECT_EQ(ReadCurveAllowList(list), (std::vector<std::string>{a.public_key, b.public_key}));
  {
    std::ofstream out(list);
    out << a.public_key << "\nnot-a-key\n";
  }
  try {
    ReadCurveAllowList(list);
    ADD_FAILURE() << "a malformed line was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("line 2"));
  }
}

TEST_F(CurveProgramsTest, EngineAndCallPrograms) {
  std::string key_file = TempPath(".key");
  Output keygen = RunTool({"keygen", "--curve", key_file});
  ASSERT_EQ(keygen.status, 0) << keygen.err;
  std::string public_key = keygen.out.substr(0, keygen.out.find('\n'));
  EXPECT_EQ(ReadCurveKeyFile(key_file).public_key, public_key);

  std::string url = "tcp://127.0.0.1:" + std::to_string(testing::FreeTcpPort());
  Process engine({"engine", "--bind", url, "--builtins", "--curve-secret-key-file", key_file});
  testing::ContextWithBoundedTerm ctx;
  bool serving = false;
  for (int i = 0; i < 100 && !serving; ++i) {
    serving = Adds(ctx, url, public_key, milliseconds(100));
  }
  ASSERT_TRUE(serving) << "engine at " << url << " never answered";

  Output r = RunTool({"call", url, "add", "1", "2", "--curve-server-key", public_key});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "3\n");
  r = RunTool({"call", url, "add", "2", "3", "--curve-server-key=" + key_file});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "5\n");
  // Without the engine's key, or with another one, the handshake fails. Whether the call
  // program sees that before its send (no peer takes the message) or after (no reply) is
  // a race; either way it fails with a reason.
  const auto kNoHandshake = AnyOf(HasSubstr("no reply within"), HasSubstr("failed handshake"));
  r = RunTool({"call", url, "add", "1", "2", "--timeout", "0.3"});
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, kNoHandshake);
  r = RunTool({"call", url, "add", "1", "2", "--timeout", "0.3", "--curve-server-key",
               GenerateCurveKeyPair().public_key});
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, kNoHandshake);
  r = RunTool({"call", url, "add", "1", "2", "--curve-server-key", "not-a-key"});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("curve server key"));
  // --curve-allow: only the listed client key gets through.
  std::string client_file = TempPath(".client");
  WriteCurveKeyFile(client_file, GenerateCurveKeyPair());
  std::string allow_file = TempPath(".allow");
  {
    std::ofstream out(allow_file);
    out << client_file << "\n";
  }
  std::string strict_url = "tcp://127.0.0.1:" + std::to_string(testing::FreeTcpPort());
  Process strict({"engine", "--bind", strict_url, "--builtins", "--curve-secret-key-file",
                  key_file, "--curve-allow", allow_file});
  serving = false;
  for (int i = 0; i < 100 && !serving; ++i) {
    serving = Adds(ctx, strict_url, public_key, milliseconds(100), ReadCurveKeyFile(client_file));
  }
  ASSERT_TRUE(serving) << "engine at " << strict_url << " never answered";
  r = RunTool({"call", strict_url, "add", "1", "2", "--timeout", "10", "--curve-server-key",
               public_key, "--curve-key-file", client_file});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "3\n");
  r = RunTool({"call", strict_url, "add", "1", "2", "--timeout", "0.5", "--curve-server-key",
               public_key});
  EXPECT_NE(r.status, 0);
  r = RunTool({"engine", "--bind", url, "--curve-secret-key-file", "/nonexistent/zerocan.key"});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("cannot open"));
}

}  // namespace
}  // namespace zerocan
