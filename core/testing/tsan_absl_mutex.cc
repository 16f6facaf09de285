// SPDX-License-Identifier: Apache-2.0
// ThreadSanitizer support for a prebuilt abseil.
//
// TSan sees a lock only through annotations that absl::Mutex emits when
// abseil itself is built with -fsanitize=thread. The distribution's abseil is
// not, so under TSan every access guarded by an absl::Mutex looks like a race.
// This file, linked into every executable of the TSan build, interposes the
// out-of-line lock entry points: each forwards to the real function (found
// with dlsym(RTLD_NEXT)) and tells TSan about the acquisition or release, so
// happens-before is modelled as with an instrumented abseil. The executable's
// definitions take precedence for its own calls and for the shared libraries'
// calls through their PLT (gRPC's locks, and abseil's own calls between its
// functions, such as absl::Notification's waits), so where one entry point
// calls another through the PLT only the inner one is interposed (a wait is
// told once).

#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"

namespace {

template <typename Fn>
Fn Real(const char* mangled) {
  void* sym = dlsym(RTLD_NEXT, mangled);
  if (sym == nullptr) {
    std::fprintf(stderr, "tsan_absl_mutex: %s not found\n", mangled);
    std::abort();
  }
  return reinterpret_cast<Fn>(sym);
}

using MemberFn = void (*)(absl::Mutex*);
using BoolMemberFn = bool (*)(absl::Mutex*);
using WaitFn = bool (*)(absl::CondVar*, absl::Mutex*,
                        absl::synchronization_internal::KernelTimeout);
using LockWhenFn = void (*)(absl::Mutex*, const absl::Condition&);
using LockWhenDeadlineFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Time);
using AwaitFn = bool (*)(absl::Mutex*, const absl::Condition&,
                         absl::synchronization_internal::KernelTimeout);

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const MemberFn real = Real<MemberFn>("_ZN4absl7debian35Mutex4LockEv");
  __tsan_mutex_pre_lock(this, 0);
  real(this);
  __tsan_mutex_post_lock(this, 0, 0);
}

void Mutex::Unlock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const MemberFn real = Real<MemberFn>("_ZN4absl7debian35Mutex6UnlockEv");
  __tsan_mutex_pre_unlock(this, 0);
  real(this);
  __tsan_mutex_post_unlock(this, 0);
}

bool Mutex::TryLock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const BoolMemberFn real = Real<BoolMemberFn>("_ZN4absl7debian35Mutex7TryLockEv");
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool ok = real(this);
  __tsan_mutex_post_lock(this, ok ? __tsan_mutex_try_lock : __tsan_mutex_try_lock_failed, 0);
  return ok;
}

void Mutex::ReaderLock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const MemberFn real = Real<MemberFn>("_ZN4absl7debian35Mutex10ReaderLockEv");
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}

void Mutex::ReaderUnlock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const MemberFn real = Real<MemberFn>("_ZN4absl7debian35Mutex12ReaderUnlockEv");
  __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

// Conditional acquisition: LockWhen and LockWhenWithDeadline (which
// LockWhenWithTimeout calls through the PLT, as absl::Notification's waits
// call these), and their reader forms. Each holds the mutex on return.
void Mutex::LockWhen(const Condition& cond) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const LockWhenFn real =
      Real<LockWhenFn>("_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  __tsan_mutex_pre_lock(this, 0);
  real(this, cond);
  __tsan_mutex_post_lock(this, 0, 0);
}

bool Mutex::LockWhenWithDeadline(const Condition& cond,
                                 absl::Time deadline) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const LockWhenDeadlineFn real = Real<LockWhenDeadlineFn>(
      "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  __tsan_mutex_pre_lock(this, 0);
  const bool met = real(this, cond, deadline);
  __tsan_mutex_post_lock(this, 0, 0);
  return met;
}

void Mutex::ReaderLockWhen(const Condition& cond) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const LockWhenFn real =
      Real<LockWhenFn>("_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  real(this, cond);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond,
                                       absl::Time deadline) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const LockWhenDeadlineFn real = Real<LockWhenDeadlineFn>(
      "_ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  const bool met = real(this, cond, deadline);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
  return met;
}

// Await, AwaitWithTimeout and AwaitWithDeadline funnel into AwaitCommon
// through the PLT: it releases the (exclusively held) mutex while it waits.
bool Mutex::AwaitCommon(const Condition& cond,
                        synchronization_internal::KernelTimeout t) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const AwaitFn real = Real<AwaitFn>(
      "_ZN4absl7debian35Mutex11AwaitCommonERKNS0_9ConditionENS0_24synchronization_internal13"
      "KernelTimeoutE");
  // Released before the wait, held again after it; in between, absl
  // evaluates the condition (ours) under its own hold of the mutex, which
  // TSan is not shown (the pre/post pair ignores what happens between).
  __tsan_mutex_pre_unlock(this, 0);
  const bool met = real(this, cond, t);
  __tsan_mutex_post_unlock(this, 0);
  __tsan_mutex_pre_lock(this, 0);
  __tsan_mutex_post_lock(this, 0, 0);
  return met;
}

// Every wait (Wait, WaitWithTimeout, WaitWithDeadline: ours, and gRPC's
// inside its shared libraries) funnels into WaitCommon through the library's
// PLT, so this one entry point sees them all. It releases the mutex and takes
// it back before returning.
bool CondVar::WaitCommon(Mutex* mutex,
                         synchronization_internal::KernelTimeout t) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  static const WaitFn real = Real<WaitFn>(
      "_ZN4absl7debian37CondVar10WaitCommonEPNS0_5MutexENS0_24synchronization_internal13"
      "KernelTimeoutE");
  __tsan_mutex_pre_unlock(mutex, 0);
  const bool timed_out = real(this, mutex, t);
  __tsan_mutex_post_unlock(mutex, 0);
  __tsan_mutex_pre_lock(mutex, 0);
  __tsan_mutex_post_lock(mutex, 0, 0);
  return timed_out;
}

ABSL_NAMESPACE_END
}  // namespace absl
