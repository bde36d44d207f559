// A small fixed-size thread pool of our own (no OpenMP: its runtime can clash with the one
// torch wheels bundle). It survives fork: a child process starts a fresh pool on first use.
#pragma once
#include <cstdint>
#include <functional>

namespace instahide {

// Threads this process may run on (its CPU affinity), at least 1.
int available_cores();

// Default thread count for parallel_for: available_cores() unless set_default_threads(n > 0).
int default_threads();
void set_default_threads(int n);

// Runs body(task) for task in [0, tasks) on up to `threads` threads (0: default_threads());
// the caller works too. Tasks are handed out dynamically; an exception in any task is
// rethrown in the caller after all tasks end.
void parallel_for(int64_t tasks, int threads, const std::function<void(int64_t)>& body);

}  // namespace instahide
