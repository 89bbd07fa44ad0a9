// Context::launch_device on the GPU plugin over the emulated runtime: the
// path a GPU takes (native stream, tables uploaded into device buffers, the
// kernel queued behind them), with kernels built as device code for the
// emulated runtime and run on its stream worker over device memory the host
// cannot touch. Kernels here are valid GPU kernels: functors over device_span.
#include <atomic>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "uhmm/uhmm.hpp"

#include "emulated_runtime.hpp"
#include "test_support.hpp"

namespace uhmm::test {
namespace {

struct AddKernel {
  device_span<const float> a;
  device_span<const float> b;
  device_span<float> c;
  UHMM_HOST_DEVICE void operator()(std::size_t i) const { c[i] = a[i] + b[i]; }
};

struct SetIndexPlus {
  device_span<std::uint64_t> x;
  std::uint64_t plus;
  UHMM_HOST_DEVICE void operator()(std::size_t i) const { x[i] = i + plus; }
};

struct AddOne {
  device_span<std::uint64_t> x;
  UHMM_HOST_DEVICE void operator()(std::size_t i) const { x[i] += 1; }
};

struct AddModSeven {
  device_span<std::uint32_t> s;
  UHMM_HOST_DEVICE void operator()(std::size_t i) const { s[i] += static_cast<std::uint32_t>(i % 7); }
};

// out[2p] = x's table entry of page p, out[2p + 1] = the first word of that page.
struct RecordTable {
  device_span<const std::uint64_t> x;
  device_span<std::uint64_t> out;
  UHMM_HOST_DEVICE void operator()(std::size_t p) const {
    const DevicePageTable& table = x.table();
    out[2 * p] = *reinterpret_cast<const std::uint64_t*>(
        UHMM_DEVICE_ADDRESS(reinterpret_cast<std::uintptr_t>(table.pages + p)));
    out[2 * p + 1] = x[p * (kPageSize / 8)];
  }
};

// Writes one word two pages past the end of its span: a page the launch's
// table does not have (an application's indexing bug).
struct WritePastTheSpan {
  device_span<std::uint64_t> x;
  UHMM_HOST_DEVICE void operator()(std::size_t) const { x[x.size() + 2 * kPageSize / 8] = 1; }
};

class EmulatedLaunchDevice : public ::testing::Test {
 protected:
  EmulatedLaunchDevice() : ctx_(emulated_options()) {}
  template <class T>
  std::span<T> make(std::size_t n) {
    return arrays_.make<T>(n);
  }

  Context ctx_;
  TestArrays arrays_{ctx_};
};

TEST_F(EmulatedLaunchDevice, TheContextRunsOnTheEmulatedPlugin) {
  const DeviceInfo info = ctx_.device_info(ctx_.device_owner(0));
  EXPECT_EQ(info.backend, "emulated");
  EXPECT_EQ(info.capabilities & kCapHostKernels, 0u);
  EXPECT_EQ(info.capabilities & kCapHostVisibleMemory, 0u);
  EXPECT_NE(info.capabilities & kCapCopyKernels, 0u);
}

TEST_F(EmulatedLaunchDevice, VectorAddGivesTheSumOnTheHostAfterward) {
  const std::size_t n = 300'001;  // not a whole number of pages
  auto a = make<float>(n);
  auto b = make<float>(n);
  auto c = make<float>(n);
  for (std::size_t i = 0; i < n; ++i) {
    a[i] = static_cast<float>(i);
    b[i] = 2.0f * static_cast<float>(i);
  }
  ctx_.launch_device(
      [n](const LaunchStream& stream, device_span<const float> x, device_span<const float> y,
          device_span<float> z) {
        EXPECT_NE(stream.native, nullptr);
        launch(stream, n, AddKernel{x, y, z});
      },
      std::span<const float>(a), std::span<const float>(b), c);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(c[i], 3.0f * static_cast<float>(i)) << i;
  EXPECT_TRUE(ctx_.validate()) << ctx_.validate().message;
  for (const auto& s : ctx_.residency(c.data(), ctx_.range_size(c.data()))) ASSERT_FALSE(s.locked);
}

TEST_F(EmulatedLaunchDevice, UploadedTablesNameDistinctDevicePagesHoldingThePagesData) {
  constexpr std::size_t kPages = 64;
  auto x = make<std::uint64_t>(kPages * kPageSize / 8);
  auto out = make<std::uint64_t>(2 * kPages);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = i / (kPageSize / 8);  // every word holds its page number
  ctx_.launch_device(
      [](const LaunchStream& stream, device_span<const std::uint64_t> in, device_span<std::uint64_t> record) {
        launch(stream, kPages, RecordTable{in, record});
      },
      std::span<const std::uint64_t>(x), out);
  std::set<std::uint64_t> seen;
  for (std::size_t p = 0; p < kPages; ++p) {
    ASSERT_NE(out[2 * p], 0u) << p;
    EXPECT_EQ(out[2 * p] % kPageSize, 0u) << p;
    EXPECT_TRUE(seen.insert(out[2 * p]).second) << "page " << p << " shares its device page";
    EXPECT_EQ(out[2 * p + 1], p);
  }
}

TEST_F(EmulatedLaunchDevice, ExceptionFromTheBodyPropagatesAfterTheStreamDrainsAndPagesUnlock) {
  auto x = make<std::uint64_t>(kPageSize / 8 * 4);
  EXPECT_THROW(ctx_.launch_device(
                   [&](const LaunchStream& stream, device_span<std::uint64_t> span) {
                     launch(stream, span.size(), SetIndexPlus{span, 7});
                     throw std::runtime_error("application failure");
                   },
                   x),
               std::runtime_error);
  for (std::size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], i + 7) << i;
  for (const auto& s : ctx_.residency(x.data(), ctx_.range_size(x.data()))) EXPECT_FALSE(s.locked);
  ctx_.launch_device(
      [](const LaunchStream& stream, device_span<std::uint64_t> span) {
        launch(stream, span.size(), SetIndexPlus{span, 1});
      },
      x);
  EXPECT_EQ(x[5], 6u);
  EXPECT_TRUE(ctx_.validate()) << ctx_.validate().message;
}

TEST_F(EmulatedLaunchDevice, HostKernelsAreRefusedAsOnAGpu) {
  auto x = make<float>(kPageSize / 4);
  try {
    ctx_.launch(
        1, [](std::size_t, device_span<float>) {}, std::span<float>(x.data(), 4));
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
  }
  EXPECT_EQ(ctx_.residency(x.data(), kPageSize)[0].residency, Residency::Empty);
}

TEST_F(EmulatedLaunchDevice, ConcurrentLaunchesOnSeveralThreadsAllComplete) {
  emuTestSetDelay(50, 7);  // streams and the host interleave differently
  constexpr int kThreads = 4;
  constexpr int kRounds = 8;
  const std::size_t n = 3 * kPageSize / 4 + 100;
  std::vector<std::span<std::uint32_t>> data;
  for (int t = 0; t < kThreads; ++t) data.push_back(make<std::uint32_t>(n));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (int r = 0; r < kRounds; ++r) {
          ctx_.launch_device([n](const LaunchStream& stream,
                                 device_span<std::uint32_t> s) { launch(stream, n, AddModSeven{s}); },
                             data[static_cast<std::size_t>(t)]);
          data[static_cast<std::size_t>(t)][static_cast<std::size_t>(r)] += 1000;  // pages go back and forth
        }
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
        ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  emuTestSetDelay(0, 1);
  ASSERT_EQ(failures.load(), 0);
  for (int t = 0; t < kThreads; ++t)
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t want = kRounds * static_cast<std::uint32_t>(i % 7) + (i < kRounds ? 1000u : 0u);
      ASSERT_EQ(data[static_cast<std::size_t>(t)][i], want) << t << " " << i;
    }
  EXPECT_TRUE(ctx_.validate()) << ctx_.validate().message;
}

TEST_F(EmulatedLaunchDevice, ScatteredPagesMigrateThroughTheCopyKernelAndStaging) {
  // After the host takes back every other page, the next launch moves
  // scattered pages (the gather/scatter kernel, reading pageable host memory
  // through pinned staging), and the host's reads bring scattered pages back.
  constexpr std::size_t kPages = 96;
  constexpr std::size_t kWords = kPageSize / 8;
  auto x = make<std::uint64_t>(kPages * kWords);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = i;
  const auto add_one = [](const LaunchStream& stream, device_span<std::uint64_t> span) {
    launch(stream, span.size(), AddOne{span});
  };
  ctx_.launch_device(add_one, x);
  for (std::size_t p = 0; p < kPages; p += 2) x[p * kWords] += 10;  // every other page back to the host
  const emuTestCounts before = emuTestGetCounts();
  ctx_.launch_device(add_one, x);
  // The launch's own kernel, and at least one copy kernel for the scattered pages.
  EXPECT_GE(emuTestGetCounts().kernels - before.kernels, 2u);
  for (std::size_t i = 0; i < x.size(); ++i)
    ASSERT_EQ(x[i], i + 2 + (i % kWords == 0 && (i / kWords) % 2 == 0 ? 10 : 0)) << i;
  EXPECT_TRUE(ctx_.validate()) << ctx_.validate().message;
}

// Issue 16, defect 1: a kernel's miss used to trap, and a trap is the
// runtime's sticky error (cudaErrorLaunchFailure): every later call failed,
// so every page resident on the device was lost with it. A miss is now
// recorded in the launch's fault word, read after the drain: the launch fails
// with device_fault and the device goes on.
TEST_F(EmulatedLaunchDevice, AMissInDeviceCodeFailsTheLaunchAndTheDeviceKeepsItsPages) {
  auto kept = make<std::uint64_t>(4 * kPageSize / 8);
  const auto set = [](const LaunchStream& stream, device_span<std::uint64_t> span) {
    launch(stream, span.size(), SetIndexPlus{span, 5});
  };
  ctx_.launch_device(set, kept);  // kept's pages now live on the device only
  auto other = make<std::uint64_t>(kPageSize / 8);
  try {
    ctx_.launch_device(
        [](const LaunchStream& stream, device_span<std::uint64_t> span) { launch(stream, 1, WritePastTheSpan{span}); },
        other);
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::device_fault) << e.what();
  }
  const MigrationResult back = ctx_.migrate_to_host(kept.data(), kept.size_bytes());
  ASSERT_TRUE(back.status) << back.status.message;
  EXPECT_EQ(back.failed, 0u);
  for (std::size_t i = 0; i < kept.size(); ++i) ASSERT_EQ(kept[i], i + 5) << i;
  ctx_.launch_device(set, other);  // the device still runs kernels
  EXPECT_EQ(other[3], 8u);
  for (const auto& s : ctx_.residency(other.data(), other.size_bytes())) EXPECT_FALSE(s.locked);
}

TEST(EmulatedPlugin, AutoNeverSelectsItEvenWhereItsDirectoryIsSearched) {
  ContextOptions o = emulated_options();
  o.backend = "auto";
  Context ctx(o);
  EXPECT_EQ(ctx.device_info(ctx.device_owner(0)).backend, "cpu");
}

}  // namespace
}  // namespace uhmm::test
