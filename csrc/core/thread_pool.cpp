#include "thread_pool.h"

#if defined(__linux__)
#include <sched.h>
#endif
#if !defined(_WIN32)
#include <pthread.h>
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace instahide {
namespace {

class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int workers() const { return int(threads_.size()); }

  void run(int64_t tasks, int helpers, const std::function<void(int64_t)>& body) {
    std::lock_guard<std::mutex> one_job(job_mutex_);  // one parallel_for at a time
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body;
      tasks_ = tasks;
      next_.store(0);
      error_ = nullptr;
      helpers_wanted_ = helpers;
      helpers_active_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(mutex_);
    helpers_wanted_ = 0;  // late wakers must not join this job
    done_.wait(lock, [this] { return helpers_active_ == 0; });
    body_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void drain() {
    for (int64_t task; (task = next_.fetch_add(1)) < tasks_;) {
      try {
        (*body_)(task);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(tasks_);
      }
    }
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || (generation_ != seen && helpers_wanted_ > 0); });
      if (stopping_) return;
      seen = generation_;
      --helpers_wanted_;
      ++helpers_active_;
      lock.unlock();
      drain();
      lock.lock();
      if (--helpers_active_ == 0) done_.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex job_mutex_, mutex_;
  std::condition_variable wake_, done_;
  bool stopping_ = false;
  uint64_t generation_ = 0;
  const std::function<void(int64_t)>* body_ = nullptr;
  int64_t tasks_ = 0;
  std::atomic<int64_t> next_{0};
  int helpers_wanted_ = 0, helpers_active_ = 0;
  std::exception_ptr error_;
};

std::mutex g_pool_mutex;
Pool* g_pool = nullptr;  // leaked on purpose at exit and after fork (its threads are gone)
std::atomic<int> g_default_threads{0};

void forget_pool_after_fork() {
  g_pool = nullptr;
  new (&g_pool_mutex) std::mutex();
}

Pool& pool_with(int workers) {
#if !defined(_WIN32)  // no fork on Windows
  static bool registered = [] { return pthread_atfork(nullptr, nullptr, forget_pool_after_fork) == 0; }();
  (void)registered;
#endif
  if (!g_pool || g_pool->workers() < workers) {
    delete g_pool;
    g_pool = new Pool(workers);
  }
  return *g_pool;
}

}  // namespace

int available_cores() {
#if defined(__linux__)  // the cores this process may run on (taskset, cgroup cpusets)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? int(n) : 1;
}

int default_threads() {
  int n = g_default_threads.load();
  return n > 0 ? n : available_cores();
}

void set_default_threads(int n) { g_default_threads.store(n > 0 ? n : 0); }

void parallel_for(int64_t tasks, int threads, const std::function<void(int64_t)>& body) {
  if (tasks <= 0) return;
  if (threads <= 0) threads = default_threads();
  int64_t helpers = std::min<int64_t>(threads, tasks) - 1;
  if (helpers <= 0) {
    for (int64_t t = 0; t < tasks; ++t) body(t);
    return;
  }
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  pool_with(int(helpers)).run(tasks, int(helpers), body);
}

}  // namespace instahide
