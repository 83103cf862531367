// Happens-before through libzmq, told to ThreadSanitizer.
//
// libzmq hands messages between threads through lock-free pipes (inproc://, and between
// a socket and its I/O thread) whose atomics TSan cannot see: libzmq is not built with
// -fsanitize=thread. So bytes written by one thread before a send and read by another
// after the matching receive (an envelope, a zero-copy payload) look like a data race.
// In a TSan build every send of ours (SendFrames in src/transport/zmq.cc)
// releases, and every received part (its Receive) acquires, one sync object: the
// edge libzmq provides, made visible (coarser than libzmq's, which pairs one pipe's
// ends). Elsewhere these compile to nothing.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define ZEROCAN_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ZEROCAN_TSAN 1
#endif
#endif

#ifdef ZEROCAN_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace zerocan::internal {

#ifdef ZEROCAN_TSAN
inline char tsan_zmq_sync;
// Before handing a message to libzmq.
inline void TsanBeforeZmqSend() { __tsan_release(&tsan_zmq_sync); }
// After libzmq handed a message over.
inline void TsanAfterZmqReceive() { __tsan_acquire(&tsan_zmq_sync); }
#else
inline void TsanBeforeZmqSend() {}
inline void TsanAfterZmqReceive() {}
#endif

}  // namespace zerocan::internal
