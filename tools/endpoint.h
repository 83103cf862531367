// Checks of a URL that `zerocan call` connects to, so that a mistyped or dead endpoint is
// reported at once instead of as a timeout: libzmq connects in the background and retries
// forever, whether the host is unknown or nothing listens.
#pragma once

#include <chrono>
#include <string>

namespace zerocan::tools {

// "" when `url` is TRANSPORT://ADDRESS and, for tcp, ADDRESS is [SOURCE;]HOST:PORT with a
// PORT from 1 to 65535; else what is wrong ("port 99999 is not between 1 and 65535").
// Looks nothing up.
std::string EndpointSyntaxProblem(const std::string& url);

// "" when something may be listening at `url`; else why nothing can be: for tcp an unknown
// host or a refused connection, for ipc a missing or refused socket file. Opens a plain
// connection (closed at once, without a ZMTP handshake) and waits for it at most `wait`;
// a connection still pending then counts as possibly listening. Resolving a host name may
// take as long as the resolver does. Other transports: "".
std::string EndpointUnreachable(const std::string& url, std::chrono::milliseconds wait);

}  // namespace zerocan::tools
