// Context::launch_device: kernels the application launches itself with
// uhmm::launch(stream, n, functor), over device page tables uploaded into
// device memory. On the cpu backend (both fault modes), and on a test plugin
// that poses as a GPU (no host kernels, host-visible memory) so that the path
// real GPUs take (device buffers, upload, a stream from the pool) runs here.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace uhmm::test {
namespace {

// The vector-add kernel body of the sample, as a functor (host and device).
struct AddKernel {
  device_span<const float> a;
  device_span<const float> b;
  device_span<float> c;
  UHMM_HOST_DEVICE void operator()(std::size_t i) const { c[i] = a[i] + b[i]; }
};

ContextOptions gpu_like_options() {
  ContextOptions o;
  o.backend = "cuda";
  o.plugin_dir = UHMM_TEST_PLUGINS_GPU_LIKE;
  o.device_pool_bytes = 64 * MiB;
  o.fault_mode = test_fault_mode();
  return o;
}

class LaunchDevice : public ::testing::TestWithParam<bool> {
 protected:
  // GetParam(): true for the GPU-like plugin, false for the cpu backend.
  LaunchDevice() : ctx_(GetParam() ? gpu_like_options() : cpu_options()) {}

  template <class T>
  std::span<T> make(std::size_t n) {
    return arrays_.make<T>(n);
  }

  Context ctx_;
  TestArrays arrays_{ctx_};
};

TEST_P(LaunchDevice, VectorAddGivesTheSumOnTheHostAfterward) {
  const std::size_t n = 300'001;  // not a whole number of pages
  auto a = make<float>(n);
  auto b = make<float>(n);
  auto c = make<float>(n);
  for (std::size_t i = 0; i < n; ++i) {
    a[i] = static_cast<float>(i);
    b[i] = 2.0f * static_cast<float>(i);
  }
  ctx_.launch_device(
      [n](const LaunchStream& stream, device_span<const float> x, device_span<const float> y, device_span<float> z) {
        launch(stream, n, AddKernel{x, y, z});
      },
      std::span<const float>(a), std::span<const float>(b), c);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(c[i], 3.0f * static_cast<float>(i)) << i;
  EXPECT_TRUE(ctx_.validate()) << ctx_.validate().message;
  // Nothing stays locked.
  for (const auto& s : ctx_.residency(c.data(), ctx_.range_size(c.data()))) ASSERT_FALSE(s.locked);
}

TEST_P(LaunchDevice, UploadedTablesNameEachPagesDevicePageAndPagesAreLocked) {
  const std::size_t words = 64 * kPageSize / 8;
  auto x = make<std::uint64_t>(words);
  for (std::size_t i = 0; i < words; ++i) x[i] = i / (kPageSize / 8);  // every word holds its page number
  const OwnerId owner = ctx_.device_owner(0);
  // Read by a kernel: the upload is asynchronous, ordered before the kernels on the stream.
  std::vector<std::uint64_t> entries, data_at_entry;
  std::vector<PageState> states;
  const void* table_address = nullptr;
  ctx_.launch_device(
      [&](const LaunchStream& stream, device_span<std::uint64_t> span) {
        EXPECT_NE(stream.host, nullptr);
        EXPECT_EQ(stream.native, nullptr);  // neither backend here has a runtime stream
        launch(stream, 1, [&, span](std::size_t) {
          const DevicePageTable& table = span.table();
          table_address = table.pages;
          for (std::size_t p = 0; p < table.npages; ++p) {
            entries.push_back(table.pages[p]);  // host-visible on both devices here
            data_at_entry.push_back(
                table.pages[p] == 0 ? ~0ull : *reinterpret_cast<const std::uint64_t*>(static_cast<std::uintptr_t>(table.pages[p])));
          }
          states = ctx_.residency(x.data(), 64 * kPageSize);  // while the kernel holds the pages
        });
      },
      x);
  // The table is not the caller's memory: it was uploaded into a device buffer.
  EXPECT_NE(table_address, static_cast<const void*>(x.data()));
  ASSERT_EQ(entries.size(), 64u);
  ASSERT_EQ(states.size(), 64u);
  std::set<std::uint64_t> seen;
  for (std::size_t p = 0; p < 64; ++p) {
    ASSERT_NE(entries[p], 0u) << p;
    EXPECT_EQ(entries[p] % kPageSize, 0u) << p;
    EXPECT_TRUE(seen.insert(entries[p]).second) << "page " << p << " shares its device page";
    // The entry is the device page the mirror names: it holds the page's data.
    EXPECT_EQ(data_at_entry[p], p);
    EXPECT_EQ(states[p].residency, Residency::Device) << p;
    EXPECT_EQ(states[p].device.owner, owner) << p;
    EXPECT_TRUE(states[p].locked) << p;
  }
  for (const auto& s : ctx_.residency(x.data(), 64 * kPageSize)) EXPECT_FALSE(s.locked);
}

TEST_P(LaunchDevice, CpuAccessDuringTheKernelWaitsAndSeesItsWrites) {
  auto x = make<std::uint64_t>(kPageSize / 8);
  x[0] = 1;
  std::atomic<bool> kernel_started{false};
  std::atomic<std::uint64_t> seen{0};
  std::thread reader;
  ctx_.launch_device(
      [&](const LaunchStream& stream, device_span<std::uint64_t> span) {
        launch(stream, 1, [span, &kernel_started](std::size_t) {
          kernel_started = true;
          std::this_thread::sleep_for(std::chrono::milliseconds(150));
          span[0] = 42;
        });
        // A CPU access while the kernel holds the page: it parks until the launch ends.
        reader = std::thread([&] {
          while (!kernel_started) std::this_thread::yield();
          seen = *static_cast<volatile std::uint64_t*>(x.data());
        });
        if (!GetParam()) {
          // The cpu backend runs kernels asynchronously: the reader starts during the kernel.
          while (!kernel_started) std::this_thread::yield();
        }
      },
      x);
  reader.join();
  EXPECT_EQ(seen.load(), 42u);
  EXPECT_EQ(x[0], 42u);
}

TEST_P(LaunchDevice, ExceptionFromTheBodyPropagatesAfterTheStreamDrainsAndPagesUnlock) {
  auto x = make<std::uint64_t>(kPageSize / 8 * 4);
  EXPECT_THROW(ctx_.launch_device(
                   [&](const LaunchStream& stream, device_span<std::uint64_t> span) {
                     launch(stream, span.size(), [span](std::size_t i) { span[i] = i + 7; });
                     throw std::runtime_error("application failure");
                   },
                   x),
               std::runtime_error);
  // The kernel enqueued before the throw ran to completion (the stream drained).
  for (std::size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], i + 7) << i;
  for (const auto& s : ctx_.residency(x.data(), ctx_.range_size(x.data()))) EXPECT_FALSE(s.locked);
  EXPECT_TRUE(ctx_.validate()) << ctx_.validate().message;
  // And the context still launches.
  ctx_.launch_device([](const LaunchStream& stream, device_span<std::uint64_t> span) {
    launch(stream, span.size(), [span](std::size_t i) { span[i] = 1; });
  }, x);
  EXPECT_EQ(x[5], 1u);
}

TEST_P(LaunchDevice, ExceptionFromTheFunctorBecomesAnErrorAndUnlocks) {
  auto x = make<std::uint64_t>(kPageSize / 8);
  try {
    ctx_.launch_device([](const LaunchStream& stream, device_span<std::uint64_t> span) {
      launch(stream, span.size(), [](std::size_t i) {
        if (i == 3) throw std::runtime_error("functor failure");
      });
    }, x);
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    // The cpu backend reports it as a failed kernel; the GPU-like path runs it in the caller.
    EXPECT_EQ(e.code(), Errc::device_error) << e.what();
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(GetParam()) << e.what();
  }
  for (const auto& s : ctx_.residency(x.data(), kPageSize)) EXPECT_FALSE(s.locked);
}

TEST_P(LaunchDevice, AKernelOutsideItsSpanFailsWithDeviceFault) {
  auto x = make<std::uint64_t>(kPageSize / 8);
  try {
    ctx_.launch_device([](const LaunchStream& stream, device_span<std::uint64_t> span) {
      launch(stream, 1, [span](std::size_t) { span[3 * kPageSize / 8] = 1; });
    }, x);
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::device_fault) << e.what();
  }
  for (const auto& s : ctx_.residency(x.data(), kPageSize)) EXPECT_FALSE(s.locked);
}

TEST_P(LaunchDevice, BadInputThrowsAndChangesNothing) {
  auto x = make<std::uint64_t>(kPageSize / 8 * 2);
  const auto before = ctx_.residency(x.data(), 2 * kPageSize);
  int calls = 0;
  const auto body = [&](const LaunchStream&, device_span<std::uint64_t>) { ++calls; };
  const auto expect_code = [&](Errc code, auto&& f) {
    try {
      f();
      ADD_FAILURE() << "no exception";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find("launch_device"), std::string::npos) << e.what();
    }
  };
  expect_code(Errc::invalid_argument, [&] { ctx_.launch_device(body, std::span<std::uint64_t>()); });
  expect_code(Errc::invalid_argument, [&] { ctx_.launch_device(body, std::span<std::uint64_t>(x.data(), 0)); });
  std::vector<std::uint64_t> heap(16);
  expect_code(Errc::out_of_range, [&] { ctx_.launch_device(body, std::span<std::uint64_t>(heap)); });
  expect_code(Errc::invalid_argument, [&] { ctx_.launch_device_on(99, body, x); });
  // Spans resolve before anything moves: a bad second span leaves the first alone.
  expect_code(Errc::out_of_range, [&] {
    ctx_.launch_device([&](const LaunchStream&, device_span<std::uint64_t>, device_span<std::uint64_t>) { ++calls; },
                       x, std::span<std::uint64_t>(heap));
  });
  EXPECT_EQ(calls, 0);
  const auto after = ctx_.residency(x.data(), 2 * kPageSize);
  for (std::size_t p = 0; p < before.size(); ++p) EXPECT_EQ(after[p].residency, before[p].residency) << p;
}

TEST_P(LaunchDevice, ConcurrentLaunchesOnSeveralThreadsAllComplete) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 12;
  const std::size_t n = 3 * kPageSize / 4 + 100;
  std::vector<std::span<std::uint32_t>> data;
  for (int t = 0; t < kThreads; ++t) data.push_back(make<std::uint32_t>(n));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (int r = 0; r < kRounds; ++r) {
          ctx_.launch_device([n](const LaunchStream& stream, device_span<std::uint32_t> s) {
            launch(stream, n, [s](std::size_t i) { s[i] += static_cast<std::uint32_t>(i % 7); });
          }, data[static_cast<std::size_t>(t)]);
          // The CPU touches it between launches: pages go back and forth.
          data[static_cast<std::size_t>(t)][static_cast<std::size_t>(r)] += 1000;
        }
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
        ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  for (int t = 0; t < kThreads; ++t) {
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t want = kRounds * static_cast<std::uint32_t>(i % 7) + (i < kRounds ? 1000u : 0u);
      ASSERT_EQ(data[static_cast<std::size_t>(t)][i], want) << t << " " << i;
    }
  }
  EXPECT_TRUE(ctx_.validate()) << ctx_.validate().message;
}

INSTANTIATE_TEST_SUITE_P(Backends, LaunchDevice, ::testing::Values(false, true),
                         [](const auto& param_info) { return param_info.param ? "GpuLikePlugin" : "Cpu"; });

TEST(LaunchDeviceGpuPath, ContextLaunchOfHostKernelsIsRefusedOnAGpuLikeDevice) {
  Context ctx(gpu_like_options());
  auto* p = static_cast<float*>(ctx.allocate(kPageSize));
  try {
    ctx.launch(1, [](std::size_t, device_span<float>) {}, std::span<float>(p, 4));
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("launch_device"), std::string::npos) << e.what();
  }
  EXPECT_EQ(ctx.residency(p, kPageSize)[0].residency, Residency::Empty);
  ctx.free(p);
}

TEST(LaunchDeviceCpu, ContextLaunchAndLaunchDeviceShareTheSameLockingAndTables) {
  Context ctx(cpu_options());
  const std::size_t n = 5000;
  auto* p = static_cast<float*>(ctx.allocate(n * sizeof(float)));
  for (std::size_t i = 0; i < n; ++i) p[i] = 1.0f;
  for (int r = 0; r < 20; ++r) {
    ctx.launch(n, [](std::size_t i, device_span<float> x) { x[i] *= 2.0f; }, std::span<float>(p, n));
    ctx.launch_device([n](const LaunchStream& s, device_span<float> x) {
      launch(s, n, [x](std::size_t i) { x[i] *= 0.5f; });
    }, std::span<float>(p, n));
  }
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(p[i], 1.0f) << i;
  ctx.free(p);
}

}  // namespace
}  // namespace uhmm::test
