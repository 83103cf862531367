#include "zerocan/curve.h"

#include "zerocan/transport/zmq.h"

#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <set>
#include <thread>
#include <vector>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "zerocan/error.h"

namespace zerocan {

namespace {

constexpr size_t kZ85KeySize = 40;

bool IsZ85Key(std::string_view key) {
  // zmq_z85_decode accepts any length that is a multiple of 5; a Curve key is exactly 40.
  uint8_t raw[32];
  std::string copy(key);
  return key.size() == kZ85KeySize && zmq_z85_decode(raw, copy.c_str()) != nullptr;
}

void CheckZ85(std::string_view key, std::string_view what) {
  if (!IsZ85Key(key)) {
    throw Error(absl::StrCat(internal::Sv(what), ": not a Z85 Curve key (", key.size(),
                             " characters; expected 40)"));
  }
}

void RequireCurve() {
  if (!CurveAvailable()) throw Error("CurveZMQ: this libzmq was built without curve support");
}

}  // namespace

bool CurveAvailable() noexcept { return zmq_has("curve") != 0; }

CurveKeyPair GenerateCurveKeyPair() {
  RequireCurve();
  char pub[kZ85KeySize + 1], sec[kZ85KeySize + 1];
  if (zmq_curve_keypair(pub, sec) != 0) throw Error("zmq_curve_keypair failed");
  return CurveKeyPair{pub, sec};
}

std::string CurvePublicKey(std::string_view secret_key) {
  RequireCurve();
  CheckZ85(secret_key, "secret key");
  std::string secret(secret_key);
  char pub[kZ85KeySize + 1];
  if (zmq_curve_public(pub, secret.c_str()) != 0) throw Error("zmq_curve_public failed");
  return pub;
}

CurveKeyPair ReadCurveKeyFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(absl::StrCat("curve key file ", path, ": cannot open"));
  std::ostringstream text;
  text << in.rdbuf();
  std::string content = text.str();
  size_t begin = content.find_first_not_of(" \t\r\n");
  size_t end = content.find_last_not_of(" \t\r\n");
  content = begin == std::string::npos ? "" : content.substr(begin, end - begin + 1);
  CurveKeyPair keys;
  // Z85 has '{' in its alphabet: a bare key may start with it, so a file that is one
  // key is a bare key before it is JSON.
  if (!IsZ85Key(content) && !content.empty() && content.front() == '{') {
    auto json = nlohmann::json::parse(content, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object()) {
      throw Error(absl::StrCat("curve key file ", path, ": not a JSON object"));
    }
    for (auto [field, out] : {std::pair{"public_key", &keys.public_key},
                              std::pair{"secret_key", &keys.secret_key}}) {
      auto it = json.find(field);
      if (it == json.end()) continue;
      if (!it->is_string()) {
        throw Error(absl::StrCat("curve key file ", path, ": ", field, " is not a string"));
      }
      *out = it->get<std::string>();
      CheckZ85(*out, absl::StrCat("curve key file ", path, ": ", field));
    }
  } else {
    keys.secret_key = content;
    CheckZ85(keys.secret_key, absl::StrCat("curve key file ", path));
  }
  if (keys.secret_key.empty() && keys.public_key.empty()) {
    throw Error(absl::StrCat("curve key file ", path, ": no public_key or secret_key"));
  }
  if (!keys.secret_key.empty()) {
    std::string derived = CurvePublicKey(keys.secret_key);
    if (!keys.public_key.empty() && keys.public_key != derived) {
      throw Error(absl::StrCat("curve key file ", path,
                               ": public_key does not belong to secret_key"));
    }
    keys.public_key = derived;
  }
  return keys;
}

std::vector<std::string> ReadCurveAllowList(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(absl::StrCat("curve allow-list ", path, ": cannot open"));
  std::vector<std::string> keys;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    size_t begin = line.find_first_not_of(" \t\r");
    // (A 40-character Z85 key never starts with '#': its first digit is at most 82 of 85.)
    if (begin == std::string::npos || line[begin] == '#') continue;
    size_t end = line.find_last_not_of(" \t\r");
    std::string entry = line.substr(begin, end - begin + 1);
    std::string where = absl::StrCat("curve allow-list ", path, " line ", number);
    if (entry.size() == kZ85KeySize) {
      CheckZ85(entry, where);
      keys.push_back(entry);
    } else {
      try {
        keys.push_back(ReadCurveKeyFile(entry).public_key);
      } catch (const Error& e) {
        throw Error(absl::StrCat(where, ": neither a 40-character Z85 key nor a key file (",
                                 e.what(), ")"));
      }
    }
  }
  return keys;
}

// ---- CurveAllowList: a ZAP handler ---------------------------------------------------------

struct CurveAllowList::State {
  zmq::socket_t handler;
  std::set<std::string> allowed;  // raw 32-byte keys
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> refused{0};
  std::thread thread;

  // One ZAP request (RFC 27): version, request id, domain, address, identity, mechanism,
  // credentials...; the reply: version, request id, status code, status text, user id,
  // metadata.
  void Answer(std::vector<zmq::message_t>& request) {
    if (request.size() < 6) return;  // not a ZAP request: nothing sensible to answer
    bool ok = request[5].to_string_view() == "CURVE" && request.size() >= 7 &&
              allowed.count(request[6].to_string()) > 0;
    if (!ok) refused.fetch_add(1, std::memory_order_relaxed);
    std::string user;
    if (ok) {
      char z85[kZ85KeySize + 1];
      zmq_z85_encode(z85, static_cast<const uint8_t*>(request[6].data()), 32);
      user = z85;
    }
    const std::string parts[] = {"1.0", request[1].to_string(), ok ? "200" : "400",
                                 ok ? "OK" : "client key not allowed", user, ""};
    for (size_t i = 0; i < 6; ++i) {
      handler.send(zmq::buffer(parts[i]), i < 5 ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }

  void Loop() {
    while (!stop.load(std::memory_order_acquire)) {
      zmq::pollitem_t item{handler.handle(), 0, ZMQ_POLLIN, 0};
      try {
        if (zmq::poll(&item, 1, std::chrono::milliseconds(100)) == 0) continue;
        std::vector<zmq::message_t> request;
        do {
          request.emplace_back();
          if (!handler.recv(request.back())) break;
        } while (request.back().more());
        Answer(request);
      } catch (const zmq::error_t&) {
        return;  // the context is terminating
      }
    }
  }
};

CurveAllowList::CurveAllowList(zmq::context_t& context,
                               const std::vector<std::string>& allowed_public_keys)
    : state_(std::make_unique<State>()) {
  RequireCurve();
  for (const std::string& key : allowed_public_keys) {
    CheckZ85(key, "curve allowed client key");
    uint8_t raw[32];
    std::string copy(key);
    zmq_z85_decode(raw, copy.c_str());
    state_->allowed.emplace(reinterpret_cast<const char*>(raw), sizeof(raw));
  }
  state_->handler = zmq::socket_t(context, zmq::socket_type::rep);
  state_->handler.set(zmq::sockopt::linger, 0);
  try {
    state_->handler.bind("inproc://zeromq.zap.01");
  } catch (const zmq::error_t& e) {
    throw Error(absl::StrCat("curve allow-list: cannot bind the ZAP handler of this context (",
                             e.what(), "); another one is already bound there"));
  }
  state_->thread = std::thread([s = state_.get()] { s->Loop(); });
}

CurveAllowList::~CurveAllowList() {
  state_->stop.store(true, std::memory_order_release);
  state_->thread.join();
  state_->handler.close();
}

uint64_t CurveAllowList::refused() const noexcept {
  return state_->refused.load(std::memory_order_relaxed);
}

CurveKeyPair ReadCurveServerKeys(const std::string& path) {
  CurveKeyPair keys = ReadCurveKeyFile(path);
  if (keys.secret_key.empty()) throw Error("--curve-secret-key-file " + path + ": no secret_key");
  return keys;
}

std::string ReadCurvePublicKey(const std::string& key_or_path) {
  struct stat st;
  if (::stat(key_or_path.c_str(), &st) == 0) return ReadCurveKeyFile(key_or_path).public_key;
  if (key_or_path.size() != kZ85KeySize) {
    throw Error(absl::StrCat("curve server key \"", key_or_path,
                             "\": neither a key file nor a 40-character Z85 key"));
  }
  CheckZ85(key_or_path, "curve server key");
  return key_or_path;
}

void WriteCurveKeyFile(const std::string& path, const CurveKeyPair& keys) {
  nlohmann::json json = {{"public_key", keys.public_key}, {"secret_key", keys.secret_key}};
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(absl::StrCat("curve key file ", path, ": cannot write"));
    ::chmod(path.c_str(), 0600);
    out << json.dump(2) << "\n";
    if (!out) throw Error(absl::StrCat("curve key file ", path, ": write failed"));
  }
}

void ConfigureCurveServer(zmq::socket_t& socket, const CurveKeyPair& keys) {
  RequireCurve();
  CheckZ85(keys.secret_key, "curve server secret key");
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey, keys.secret_key);
}

void ConfigureCurveClient(zmq::socket_t& socket, const CurveKeyPair& keys,
                          std::string_view server_public_key) {
  RequireCurve();
  CheckZ85(server_public_key, "curve server public key");
  CheckZ85(keys.public_key, "curve client public key");
  CheckZ85(keys.secret_key, "curve client secret key");
  socket.set(zmq::sockopt::curve_serverkey, server_public_key);
  socket.set(zmq::sockopt::curve_publickey, keys.public_key);
  socket.set(zmq::sockopt::curve_secretkey, keys.secret_key);
}

}  // namespace zerocan
