// Reads back the host settings a library must leave alone: each thread's CPU set and
// each TCP socket's congestion control, as the kernel reports them for this process.
#pragma once

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace zerocan::testing {

// The value of `field` ("Cpus_allowed_list") in a /proc status file; "" if absent.
inline std::string StatusField(const std::string& path, const std::string& field) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::string value = line.substr(field.size() + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      return value;
    }
  }
  return "";
}

// The numeric entries of directory `dir` (thread ids in /proc/self/task, descriptors in
// /proc/self/fd).
inline std::vector<int> NumericEntries(const char* dir) {
  std::vector<int> out;
  if (DIR* d = opendir(dir)) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] >= '0' && e->d_name[0] <= '9') out.push_back(std::atoi(e->d_name));
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Thread id -> its CPU set (Cpus_allowed_list), for every thread of this process.
inline std::map<int, std::string> ThreadCpuLists() {
  std::map<int, std::string> out;
  for (int tid : NumericEntries("/proc/self/task")) {
    std::string cpus =
        StatusField("/proc/self/task/" + std::to_string(tid) + "/status", "Cpus_allowed_list");
    if (!cpus.empty()) out[tid] = cpus;  // "" = the thread ended meanwhile
  }
  return out;
}

// The calling thread's CPU set as /proc reports it.
inline std::string OwnCpuList() {
  return StatusField("/proc/thread-self/status", "Cpus_allowed_list");
}

// The host's default TCP congestion control.
inline std::string HostCongestionControlName() {
  std::ifstream in("/proc/sys/net/ipv4/tcp_congestion_control");
  std::string name;
  in >> name;
  return name;
}

// Descriptor -> congestion control, for every TCP socket (listening, accepted or
// connected) this process has open.
inline std::map<int, std::string> TcpCongestionControls() {
  std::map<int, std::string> out;
  for (int fd : NumericEntries("/proc/self/fd")) {
    int protocol = 0;
    socklen_t plen = sizeof(protocol);
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &plen) != 0 || protocol != IPPROTO_TCP) {
      continue;  // not a socket, or not TCP
    }
    char name[16] = {};
    socklen_t len = sizeof(name);
    if (getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &len) != 0) continue;
    out[fd] = std::string(name, strnlen(name, std::min<size_t>(len, sizeof(name))));
  }
  return out;
}

}  // namespace zerocan::testing
