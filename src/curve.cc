#include "zerocan/curve.h"

#include "zerocan/transport/zmq.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "zerocan/error.h"

namespace zerocan {

namespace {

constexpr size_t kZ85KeySize = 40;

void CheckZ85(std::string_view key, std::string_view what) {
  // zmq_z85_decode accepts any length that is a multiple of 5; a Curve key is exactly 40.
  uint8_t raw[32];
  std::string copy(key);
  if (key.size() != kZ85KeySize || zmq_z85_decode(raw, copy.c_str()) == nullptr) {
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
  if (!content.empty() && content.front() == '{') {
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
