// Optional encryption and peer authentication through libzmq's own CurveZMQ.
//
// zerocan does not encrypt anything itself: when both ends set Curve keys, libzmq
// encrypts every frame on the wire (and the server only talks to clients that know its
// public key). Signatures (signing.h) still matter across brokers, which terminate Curve.
// Keys are Z85 text, 40 characters each (zmq_curve_keypair). docs/SECURITY.md shows the
// command-line options (--curve-secret-key-file, --curve-server-key).
//
// Configure a socket before bind/connect.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace zerocan {

struct CurveKeyPair {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;  // Z85, 40 characters
};

// True when the libzmq in use was built with CurveZMQ (zmq_has("curve")).
bool CurveAvailable() noexcept;

// A fresh key pair. Throws Error when Curve is unavailable.
CurveKeyPair GenerateCurveKeyPair();

// The public key belonging to a Z85 secret key. Throws Error on a malformed key.
std::string CurvePublicKey(std::string_view secret_key);

// Reads a key file: JSON {"public_key": "...", "secret_key": "..."} (either may be
// missing; the public key is derived from the secret one), or a bare 40-character
// secret key. Throws Error naming the path and what is wrong.
CurveKeyPair ReadCurveKeyFile(const std::string& path);
// A server public key given on a command line: a 40-character Z85 key, or the path of a
// key file (ReadCurveKeyFile) whose public_key is used. Throws Error naming what is wrong.
std::string ReadCurvePublicKey(const std::string& key_or_path);
// A server's key pair from a key file, which must hold a secret key (the programs'
// --curve-secret-key-file). Throws Error naming the path otherwise.
CurveKeyPair ReadCurveServerKeys(const std::string& path);
// An allow-list of client public keys (EngineOptions/BrokerOptions::curve_allowed_clients,
// --curve-allow FILE): one 40-character Z85 public key per line, or the path of a key
// file (ReadCurveKeyFile) whose public_key is used; blank lines and lines starting with
// '#' are skipped. Throws Error naming the path and line of what is wrong.
std::vector<std::string> ReadCurveAllowList(const std::string& path);
// Writes `keys` as JSON, readable by the owner only (mode 0600).
void WriteCurveKeyFile(const std::string& path, const CurveKeyPair& keys);

}  // namespace zerocan
