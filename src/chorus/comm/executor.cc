// The executor and point-to-point tracking (executor.h).
#include "chorus/comm/executor.h"

#include <typeinfo>

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "chorus/common/env.h"
#include "chorus/common/logging.h"

namespace chorus::comm {
namespace detail {
namespace {

// The background executor runs async collectives while the caller computes (DDP's backward
// pass). When compute threads hold every core, a thread of equal priority waits for the
// scheduler's next turn, and the overlap is lost; a higher priority (lower nice) lets it
// preempt them. It sleeps whenever it has nothing to do, so it takes no time from them then.
void raiseCommThreadPriority() {
  int nice = static_cast<int>(envInt("CHORUS_COMM_NICE"));
  if (nice == 0) return;
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice) != 0) {
    CHORUS_DEBUG("could not set the comm thread's nice value to ", nice, " (", strerror(errno), "); it stays unchanged");
  }
}

}  // namespace

[[noreturn]] void rethrowAfterClose(Transport& transport, const std::string& context) {
  try {
    throw;
  } catch (const Error& e) {
    const std::exception_ptr cause = transport.closeCause();
    // Only a plain Error can be "the transport is closed"; anything more specific stands.
    if (typeid(e) != typeid(Error) || !cause) rethrowWithContext(context);
    const std::string why = str(context, e.what(), "; this process closed the ", transport.name(),
                                " transport when an earlier call failed: ");
    try {
      std::rethrow_exception(cause);
    } catch (const PeerError& first) {
      throw PeerError(why + first.what(), first.peer());
    } catch (const TimeoutError& first) {
      throw TimeoutError(why + first.what());
    } catch (...) {
    }
    rethrowWithContext(context);
  } catch (...) {
    rethrowWithContext(context);
  }
}

[[noreturn]] void failCall(Transport& transport, const std::string& context) {
  try {
    throw;
  } catch (const InvalidArgument&) {
    rethrowWithContext(context);
  } catch (...) {
    if (!transport.noteCloseCause(std::current_exception())) rethrowAfterClose(transport, context);
    CHORUS_WARN(context, "failed; closing the ", transport.name(),
                " transport, so this process's groups cannot run further calls (create new ones)");
    transport.close();
    rethrowWithContext(context);
  }
}

bool requestFailedOnItsOwn(Transport& transport, const RequestPtr& r) {
  try {
    transport.test(r);
    return false;
  } catch (...) {
    return true;
  }
}

void PointToPoint::progress(Transport& transport, bool block) {
  RequestPtr r;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (done || !req) return;
    r = req;
  }
  try {
    if (block) {
      RequestPtr one[] = {r};
      transport.waitAll(one, deadline);
      finish(nullptr);
    } else if (transport.test(r)) {
      finish(nullptr);
    } else if (deadline.expired()) {
      throw TimeoutError("it did not complete before its deadline; the peer never posted the matching call");
    }
  } catch (...) {
    // The request failed on its own (a dead peer, a mismatch): it is over, and nothing else
    // of this call is posted, so the transport stays open for the other sends, receives and
    // calls (a parameter server goes on serving the workers that are alive). Otherwise (the
    // deadline, a transport error) the request may still be posted: failCall closes.
    if (requestFailedOnItsOwn(transport, r)) {
      finishWithCurrentError(transport);
      return;
    }
    try {
      failCall(transport, context);
    } catch (...) {
      finish(std::current_exception());
    }
  }
}

size_t waitAnyPointToPoint(Transport& transport, const std::vector<std::shared_ptr<PointToPoint>>& ps,
                           const Deadline& deadline, const std::string& context) {
  std::vector<RequestPtr> reqs;
  std::vector<size_t> index;  // reqs[k] is the request of ps[index[k]]
  for (size_t i = 0; i < ps.size(); ++i) {
    std::lock_guard<std::mutex> lock(ps[i]->mu);
    if (ps[i]->done) return i;
    CHORUS_CHECK(ps[i]->req != nullptr, "a send/recv issued before waitAny was not posted when waitAny ran");
    reqs.push_back(ps[i]->req);
    index.push_back(i);
  }
  size_t k = 0;
  try {
    k = transport.waitAny(reqs, deadline);
  } catch (const TimeoutError&) {
    // No request failed: they stay posted, owned by their works, which can still be waited on.
    rethrowWithContext(context);
  } catch (...) {
    failCall(transport, context);
  }
  PointToPoint& p = *ps[index[k]];
  if (reqs[k]->error) {
    // As in PointToPoint::progress: the request's own failure leaves the transport open.
    try {
      std::rethrow_exception(reqs[k]->error);
    } catch (...) {
      p.finishWithCurrentError(transport);
    }
  } else {
    p.finish(nullptr);
  }
  return index[k];
}

}  // namespace detail

using detail::PointToPoint;
using detail::Task;
using detail::raiseCommThreadPriority;

Executor::~Executor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void Executor::submit(const std::shared_ptr<Task>& task, bool async, const std::function<void()>& issue) {
  std::unique_lock<std::mutex> lock(mu_);
  issue();
  if (!async && !busy_ && queue_.empty()) {
    busy_ = true;
    lock.unlock();
    execute(*task);
    lock.lock();
    busy_ = false;
    if (!queue_.empty()) cv_.notify_all();
    lock.unlock();
    idle_.notify_all();
    task->test();
    return;
  }
  queue_.push_back(task);
  if (!worker_.joinable()) worker_ = std::thread([this] { workerLoop(); });
  cv_.notify_all();
  lock.unlock();
  if (!async) task->wait();
}

bool Executor::tryRunInline(const std::function<void()>& fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (busy_ || !queue_.empty()) return false;
    busy_ = true;
  }
  try {
    fn();
  } catch (...) {
    release();
    throw;
  }
  release();
  return true;
}

void Executor::addPending(std::shared_ptr<PointToPoint> p) {
  std::lock_guard<std::mutex> lock(mu_);
  pending_.push_back(std::move(p));
}

void Executor::drain() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait(lock, [&] { return !busy_ && queue_.empty(); });
}

void Executor::release() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    busy_ = false;
    if (!queue_.empty()) cv_.notify_all();
  }
  idle_.notify_all();
}

void Executor::execute(Task& task) {
  std::exception_ptr error;
  task.start();
  try {
    task.run();
  } catch (...) {
    error = std::current_exception();
  }
  std::vector<std::shared_ptr<PointToPoint>> pending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::erase_if(pending_, [](const auto& p) { return p->isDone(); });
    pending = pending_;
  }
  for (auto& p : pending) p->progress(*transport_, /*block=*/false);
  task.finish(error);
}

void Executor::workerLoop() {
  raiseCommThreadPriority();
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return (!busy_ && !queue_.empty()) || (stop_ && queue_.empty()); });
    if (queue_.empty()) return;
    std::shared_ptr<Task> task = queue_.front();
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    execute(*task);
    lock.lock();
    busy_ = false;
    idle_.notify_all();
  }
}

}  // namespace chorus::comm
