#include "tools/endpoint.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>

namespace zerocan::tools {

namespace {

struct TcpAddress {
  std::string host, port;
};

// Splits tcp://[SOURCE;]HOST:PORT (HOST may be [IPv6]); "" or what is wrong in *problem.
TcpAddress SplitTcp(std::string_view address, std::string* problem) {
  size_t source_end = address.rfind(';');
  if (source_end != std::string_view::npos) address.remove_prefix(source_end + 1);
  size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) {
    *problem = "a tcp address needs a port: tcp://HOST:PORT";
    return {};
  }
  TcpAddress out{std::string(address.substr(0, colon)), std::string(address.substr(colon + 1))};
  if (out.host.size() >= 2 && out.host.front() == '[' && out.host.back() == ']') {
    out.host = out.host.substr(1, out.host.size() - 2);
  }
  if (out.host.empty()) {
    *problem = "a tcp address needs a host: tcp://HOST:PORT";
  } else if (out.port.empty() || out.port.size() > 5 ||
             out.port.find_first_not_of("0123456789") != std::string::npos) {
    *problem = "port \"" + out.port + "\" is not a number from 1 to 65535";
  } else if (int port = std::stoi(out.port); port < 1 || port > 65535) {
    *problem = "port " + out.port + " is not between 1 and 65535";
  }
  return out;
}

// Connects a non-blocking socket to `address`: 0 when connected or still pending after
// `wait`, else the errno.
int ConnectError(const sockaddr* address, socklen_t length, int family,
                 std::chrono::milliseconds wait) {
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;  // no verdict: let the call find out
  int error = 0;
  if (connect(fd, address, length) != 0) {
    error = errno;
    if (error == EINPROGRESS) {
      pollfd item{fd, POLLOUT, 0};
      error = 0;
      if (poll(&item, 1, static_cast<int>(wait.count())) == 1) {
        socklen_t size = sizeof(error);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size);
      }
    } else if (error == EAGAIN) {
      error = 0;  // a full listen backlog: something listens
    }
  }
  close(fd);
  return error;
}

std::string TcpUnreachable(const std::string& address_text, std::chrono::milliseconds wait) {
  std::string problem;
  TcpAddress address = SplitTcp(address_text, &problem);
  if (!problem.empty()) return problem;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  int rc = getaddrinfo(address.host.c_str(), address.port.c_str(), &hints, &found);
  if (rc == EAI_NONAME || rc == EAI_FAIL || rc == EAI_NODATA) {
    return "unknown host " + address.host + " (" + gai_strerror(rc) + ")";
  }
  if (rc != 0) return "cannot resolve host " + address.host + ": " + gai_strerror(rc);
  int error = 0;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    error = ConnectError(a->ai_addr, a->ai_addrlen, a->ai_family, wait);
    if (error == 0) break;
  }
  freeaddrinfo(found);
  std::string where = address.host + " port " + address.port;
  if (error == 0) return {};
  if (error == ECONNREFUSED) return "connection refused: nothing listening at " + where;
  return "cannot connect to " + where + ": " + std::strerror(error);
}

std::string IpcUnreachable(const std::string& path, std::chrono::milliseconds wait) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) return {};  // libzmq says why
  std::memcpy(address.sun_path, path.data(), path.size());
  if (path[0] == '@') address.sun_path[0] = '\0';  // the abstract namespace, as in libzmq
  socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() +
                                            (path[0] == '@' ? 0 : 1));
  int error = ConnectError(reinterpret_cast<const sockaddr*>(&address), length, AF_UNIX, wait);
  if (error == 0) return {};
  if (error == ENOENT) return "nothing listening: no socket file " + path;
  if (error == ECONNREFUSED) return "connection refused: nothing listening at " + path;
  return "cannot connect to " + path + ": " + std::strerror(error);
}

}  // namespace

std::string EndpointSyntaxProblem(const std::string& url) {
  size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos || scheme_end == 0) {
    return "expected TRANSPORT://ADDRESS (tcp://HOST:PORT, ipc://PATH), got \"" + url + "\"";
  }
  if (url.compare(0, scheme_end, "tcp") != 0) return {};
  std::string problem;
  SplitTcp(std::string_view(url).substr(scheme_end + 3), &problem);
  return problem;
}

std::string EndpointUnreachable(const std::string& url, std::chrono::milliseconds wait) {
  if (url.rfind("tcp://", 0) == 0) return TcpUnreachable(url.substr(6), wait);
  if (url.rfind("ipc://", 0) == 0) return IpcUnreachable(url.substr(6), wait);
  return {};
}

}  // namespace zerocan::tools
