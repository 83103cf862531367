# Fails when a public header (other than the opt-in zerocan/generated.h) includes
# Cap'n Proto, KJ or an internal header, or when a header outside the ZeroMQ transport
# includes libzmq or names its frame or socket type (the data model is transport-free:
# docs/FORMAT.md, "Transport"). Run by ctest: cmake -DINCLUDE_DIR=... -P this.
file(GLOB_RECURSE headers "${INCLUDE_DIR}/zerocan/*.h")
# The ZeroMQ transport and the libzmq-specific tuning of its sockets and I/O threads;
# the umbrella header includes them all.
set(zmq_allowed transport/zmq.h pacing.h placement.h zerocan.h)
set(bad "")
foreach(header ${headers})
  file(RELATIVE_PATH name "${INCLUDE_DIR}/zerocan" ${header})
  if(NOT name STREQUAL "generated.h")
    file(STRINGS ${header} lines REGEX "^#include")
    foreach(line ${lines})
      if(line MATCHES "<capnp/|<kj/|\"capnp/|\"kj/|internal/|zerocan/wire/")
        string(APPEND bad "  ${name}: ${line}\n")
      endif()
    endforeach()
  endif()
  list(FIND zmq_allowed ${name} allowed)
  if(allowed EQUAL -1)
    file(STRINGS ${header} zmq_lines REGEX "^#include <zmq|zmq::message_t|zmq::socket_t|zmq_msg_t")
    foreach(line ${zmq_lines})
      string(APPEND bad "  ${name}: ${line}\n")
    endforeach()
  endif()
endforeach()
if(bad)
  message(FATAL_ERROR "public headers include Cap'n Proto, KJ, internal or libzmq headers "
                      "where they must not:\n${bad}")
endif()
list(LENGTH headers count)
message(STATUS "${count} public headers checked")
