// AsyncPlanner: one background thread plans submitted batches in order (batch t+1 while
// the trainer runs batch t).
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "dhp/planner.hpp"

namespace dhp {

struct AsyncPlanner::Impl {
  struct Job {
    Batch batch;
    std::promise<Plan> promise;
  };

  explicit Impl(Planner p) : planner(std::move(p)), worker([this] { run(); }) {}

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    wake.notify_one();
    worker.join();
  }

  std::future<Plan> submit(Batch batch) {
    Job job{std::move(batch), {}};
    std::future<Plan> future = job.promise.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex);
      queue.push_back(std::move(job));
    }
    wake.notify_one();
    return future;
  }

  // Drains the queue before honouring `stopping`, so every submitted future gets a value.
  void run() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mutex);
        wake.wait(lock, [this] { return stopping || !queue.empty(); });
        if (queue.empty()) return;
        job = std::move(queue.front());
        queue.pop_front();
      }
      try {
        job.promise.set_value(planner.plan(job.batch));
      } catch (...) {
        job.promise.set_exception(std::current_exception());
      }
    }
  }

  Planner planner;
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Job> queue;
  bool stopping = false;
  std::thread worker;  // last: starts after everything it uses is constructed
};

AsyncPlanner::AsyncPlanner(Planner planner) : impl_(std::make_unique<Impl>(std::move(planner))) {}
AsyncPlanner::~AsyncPlanner() = default;

std::future<Plan> AsyncPlanner::submit(Batch batch) { return impl_->submit(std::move(batch)); }

}  // namespace dhp
