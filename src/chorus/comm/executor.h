// The executor behind ProcessGroup (group.h), and its tracking of point-to-point calls.
// Internal to comm/: group.cc, calls.cc and group_env.cc use it; not part of the public API.
//
// Executor. One per transport, shared by a group and every group split from it, because a
// Transport is used by one thread at a time and every rank must run the calls in one order.
// A call is queued in issue order; its sequence number is taken under the same lock, so the
// number and the position agree. A blocking call with nothing queued or running runs inline
// on the caller's thread (no thread hand-off on the latency path); otherwise calls run on a
// background worker, started on first need, and a blocking caller waits for its own.
//
// Point-to-point. An async send/recv is posted in issue order and then left in flight, so
// sendAsync + recv on both sides of an exchange cannot deadlock; the executor checks it
// between calls, and wait() queues a wait for it, in order; waitAny() queues one wait for
// the first of several (Transport::waitAny). A send/recv whose own request fails (a dead
// peer, a mismatch) is over and left nothing posted, so unlike a failed collective it does
// not close the transport: a server goes on with its other peers.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/clock.h"
#include "chorus/common/error.h"
#include "chorus/comm/group.h"
#include "chorus/comm/transport/transport.h"

namespace chorus::comm {
namespace detail {

// wait() on an async call gives up this long after the call's own deadline; by then the call
// should have thrown TimeoutError itself, so this only catches a transport that ignores it.
inline constexpr Millis kWaitGrace{10000};

// A failed call may leave sends and receives posted that point into the caller's buffers,
// which the caller frees once the error reaches it. Nothing may touch them afterwards, so a
// failure closes the transport: every pending request fails and nothing progresses again,
// which leaves this group, and every group split from the same job, unusable (as NCCL and
// Gloo do after an error). Argument errors are thrown before anything is posted and leave
// the transport open. Call inside a catch block; rethrows with the call's context.
[[noreturn]] void failCall(Transport& transport, const std::string& context);
// Rethrows the exception in flight with `context`; when it is a plain Error (the transport is
// closed) and a failed call closed the transport before (Transport::closeCause) with a
// PeerError or TimeoutError, as that kind, naming both.
[[noreturn]] void rethrowAfterClose(Transport& transport, const std::string& context);

// Whether `r` has failed, asked through the transport so that the read is ordered with the
// backend's writes (the loopback transport completes requests from other threads).
bool requestFailedOnItsOwn(Transport& transport, const RequestPtr& r);

// One queued call: what it runs and how it ended.
class Task : public Work {
 public:
  explicit Task(Deadline deadline) : deadline_(deadline) {}

  std::function<void()> run;
  std::string context;  // the call, for errors: "allreduce(ring, ...) tag=3 on rank 1 of 4: "

  void start() {
    std::lock_guard<std::mutex> lock(mu_);
    timing_.started = std::chrono::steady_clock::now();
  }
  void finish(std::exception_ptr error) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      timing_.finished = std::chrono::steady_clock::now();
      done_ = true;
      error_ = std::move(error);
    }
    cv_.notify_all();
  }
  bool test() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_ && error_) std::rethrow_exception(error_);
    return done_;
  }
  void wait() override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_until(lock, deadline_.at() + kWaitGrace, [&] { return done_; })) {
      throw TimeoutError(str(context, "still running ", kWaitGrace.count(),
                             " ms past its deadline; its buffers are still in use. The transport is not honouring "
                             "deadlines: report this with CHORUS_LOG_LEVEL=debug output"));
    }
    if (error_) std::rethrow_exception(error_);
  }
  Timing timing() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return timing_;
  }

 private:
  const Deadline deadline_;
  mutable std::mutex mu_;
  Timing timing_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

// An async send or receive in flight: the request once posted, and how it ended.
struct PointToPoint {
  PointToPoint(std::string context, Deadline deadline) : context(std::move(context)), deadline(deadline) {}
  const std::string context;
  const Deadline deadline;
  std::mutex mu;
  RequestPtr req;  // set by the posting task
  bool done = false;
  std::exception_ptr error;

  bool isDone() {
    std::lock_guard<std::mutex> lock(mu);
    return done;
  }
  void finish(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
    error = std::move(e);
  }
  // Call inside a catch block: ends this call with the exception being handled, its message
  // prefixed with the call's context.
  void finishWithCurrentError(Transport& transport) {
    try {
      rethrowAfterClose(transport, context);
    } catch (...) {
      finish(std::current_exception());
    }
  }
  bool result() {
    std::lock_guard<std::mutex> lock(mu);
    if (error) std::rethrow_exception(error);
    return done;
  }
  // Progresses the transport; with `block`, until the request completes or the deadline.
  // Only on the executor (the transport's single user at that moment).
  void progress(Transport& transport, bool block);
};

// ProcessGroup::waitAny's task, on the executor: waits until one of `ps` (all posted by now,
// as they were issued before it) has ended, records how, and returns its index.
size_t waitAnyPointToPoint(Transport& transport, const std::vector<std::shared_ptr<PointToPoint>>& ps,
                           const Deadline& deadline, const std::string& context);

}  // namespace detail

// Runs calls one at a time in issue order (see the top of this file).
class Executor {
 public:
  explicit Executor(Transport* transport) : transport_(transport) {}
  ~Executor();

  // Queues `task` in issue order; `issue` runs under the queue lock right before (it takes
  // the call's sequence number and sets task->run). Blocking: runs the task inline when
  // nothing else is queued or running, else waits for it; rethrows its error. Async: returns
  // at once.
  void submit(const std::shared_ptr<detail::Task>& task, bool async, const std::function<void()>& issue);
  // Runs fn on this thread if no call is running or queued; false (fn not run) otherwise.
  bool tryRunInline(const std::function<void()>& fn);
  // Tracks an async send/recv until it completes; checked after every call.
  void addPending(std::shared_ptr<detail::PointToPoint> p);
  // Blocks until every queued call has run.
  void drain();

 private:
  void release();
  // Runs one call and then lets the transport progress the async point-to-point requests.
  void execute(detail::Task& task);
  void workerLoop();

  Transport* transport_;
  std::mutex mu_;
  std::condition_variable cv_;    // the worker: a task is runnable, or stop
  std::condition_variable idle_;  // drain(): nothing queued or running
  std::deque<std::shared_ptr<detail::Task>> queue_;
  std::vector<std::shared_ptr<detail::PointToPoint>> pending_;
  bool busy_ = false;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace chorus::comm
