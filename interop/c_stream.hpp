// A C API stream: a uhmm::Stream and the results of the prefetches queued on
// it, kept until a synchronization reports the first failure among them (as
// CUDA reports an asynchronous failure at the next synchronize).
#pragma once

#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "uhmm/context.hpp"
#include "uhmm/uhmm.h"

struct uhmmStream_st {
  explicit uhmmStream_st(uhmm::Stream s) : stream(std::move(s)) {}

  // Queues a result; results already in are folded into the first failure.
  void submit(std::future<uhmm::MigrationResult> result);
  // Waits for the stream's work; returns (and records) its first failure
  // since the last synchronization.
  uhmmError_t synchronize();

  uhmm::Stream stream;

 private:
  void harvest(std::future<uhmm::MigrationResult>& result);  // mutex_ held

  std::mutex mutex_;
  std::vector<std::future<uhmm::MigrationResult>> pending_;
  uhmmError_t first_error_ = uhmmSuccess;
  std::string first_message_;
};
