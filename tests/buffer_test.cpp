// uhmm::Buffer<T>: frees its range when destroyed, moves ownership, migrates
// whole pages, exposes a span a kernel can use, and a launch larger than the
// pool fails with Errc::out_of_memory without running or changing anything.
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "uhmm/uhmm.hpp"

namespace {

using namespace uhmm;

constexpr std::size_t MiB = std::size_t{1} << 20;

ContextOptions cpu_options(std::size_t pool = 32 * MiB) {
  ContextOptions o;
  o.backend = "cpu";
  o.device_pool_bytes = pool;
  if (const char* mode = std::getenv("UHMM_FAULT_MODE")) o.fault_mode = mode;  // scripts/test.sh --fault-mode
  return o;
}

std::size_t count(const std::vector<PageState>& pages, Residency r) {
  std::size_t n = 0;
  for (const auto& s : pages) n += s.residency == r;
  return n;
}

void expect_freed(const Context& ctx, const void* p) {
  try {
    (void)ctx.range_size(p);
    ADD_FAILURE() << "the range at " << p << " is still allocated";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::unknown_range) << e.what();
  }
}

float value_of(std::size_t i) { return static_cast<float>(i % 100000) * 0.5f + 1.0f; }

TEST(BufferTest, DestructorFreesTheRange) {
  Context ctx(cpu_options());
  const void* p = nullptr;
  {
    Buffer<float> b(ctx, 1000);
    p = b.data();
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(ctx.range_size(p), kPageSize);  // 4000 bytes, rounded to a page
    b[999] = 1.0f;
  }
  expect_freed(ctx, p);
}

TEST(BufferTest, DestructorFreesARangeThatLivesOnTheDevice) {
  Context ctx(cpu_options());
  const void* p = nullptr;
  {
    Buffer<std::uint32_t> b(ctx, 3 * MiB / 4);
    p = b.data();
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::uint32_t>(i);
    EXPECT_EQ(b.to_device().migrated, 3 * MiB / kPageSize);
    EXPECT_EQ(ctx.counters().device_pages_in_use, 3 * MiB / kPageSize);
  }
  expect_freed(ctx, p);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u) << "the buffer's device pages were not released";
}

TEST(BufferTest, SizesAndSpanDescribeTheElements) {
  Context ctx(cpu_options());
  Buffer<double> b(ctx, 1001);
  EXPECT_EQ(b.size(), 1001u);
  EXPECT_EQ(b.bytes(), 1001 * sizeof(double));
  EXPECT_EQ(b.range_bytes(), 2 * kPageSize);
  EXPECT_EQ(b.end() - b.begin(), 1001);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % kBlockSize, 0u) << "ranges start on a 2 MiB boundary";
  const std::span<double> s = b.span();
  EXPECT_EQ(s.data(), b.data());
  EXPECT_EQ(s.size(), b.size());
  for (std::size_t i = 0; i < b.size(); ++i) s[i] = static_cast<double>(i);
  double sum = 0;
  for (const double x : b) sum += x;
  EXPECT_EQ(sum, 1000.0 * 1001.0 / 2.0);
  // Never-touched memory reads as zero.
  Buffer<std::uint64_t> z(ctx, 4096);
  for (const std::uint64_t x : z) ASSERT_EQ(x, 0u);
}

TEST(BufferTest, MoveConstructionTransfersOwnership) {
  Context ctx(cpu_options());
  Buffer<int> a(ctx, 5000);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int>(i);
  int* const data = a.data();
  Buffer<int> b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  EXPECT_EQ(a.size(), 0u);       // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(b.data(), data);
  EXPECT_EQ(b.size(), 5000u);
  EXPECT_EQ(b[4999], 4999);
  {
    Buffer<int> gone(std::move(a));  // NOLINT(bugprone-use-after-move): moving an empty buffer
    EXPECT_EQ(gone.data(), nullptr);
  }  // destroying an empty buffer frees nothing
  EXPECT_EQ(ctx.range_size(data), 5 * kPageSize);
}

TEST(BufferTest, MoveAssignmentFreesTheOldRangeAndTakesTheNewOne) {
  Context ctx(cpu_options());
  Buffer<int> a(ctx, 100);
  Buffer<int> b(ctx, 200000);
  b[0] = 17;
  int* const old_a = a.data();
  int* const old_b = b.data();
  a = std::move(b);
  expect_freed(ctx, old_a);
  EXPECT_EQ(a.data(), old_b);
  EXPECT_EQ(a.size(), 200000u);
  EXPECT_EQ(a[0], 17);
  EXPECT_EQ(b.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(ctx.range_size(old_b), a.range_bytes());

  // Into an empty buffer.
  Buffer<int> c(std::move(a));
  a = std::move(c);
  EXPECT_EQ(a.data(), old_b);
  EXPECT_EQ(c.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(a[0], 17);
}

TEST(BufferTest, MoveAssignmentAcrossContextsFreesInTheRightContext) {
  Context one(cpu_options(8 * MiB));
  Context two(cpu_options(8 * MiB));
  Buffer<int> a(one, 1024);
  Buffer<int> b(two, 2048);
  int* const old_a = a.data();
  int* const old_b = b.data();
  a = std::move(b);  // a's range goes back to `one`; a now belongs to `two`
  expect_freed(one, old_a);
  EXPECT_EQ(two.range_size(old_b), 2 * kPageSize);
  a.to_device();
  EXPECT_EQ(count(two.residency(old_b, 2 * kPageSize), Residency::Device), 2u);
  EXPECT_EQ(one.counters().device_pages_in_use, 0u);
}

TEST(BufferTest, ToDeviceAndToHostMoveEveryPageAndKeepTheData) {
  Context ctx(cpu_options());
  Buffer<float> b(ctx, 3 * 1024 + 5);  // 3 pages and a bit: the last page is partial
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = value_of(i);
  const std::size_t pages = b.range_bytes() / kPageSize;
  ASSERT_EQ(pages, 4u);

  const MigrationResult down = b.to_device();
  EXPECT_EQ(down.pages, pages);
  EXPECT_EQ(down.migrated, pages);
  EXPECT_EQ(down.failed, 0u);
  EXPECT_EQ(count(ctx.residency(b.data(), b.range_bytes()), Residency::Device), pages);

  const MigrationResult up = b.to_host();
  EXPECT_EQ(up.migrated, pages);
  EXPECT_EQ(count(ctx.residency(b.data(), b.range_bytes()), Residency::System), pages);
  for (std::size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b[i], value_of(i)) << i;

  // Back down, then read through faults.
  EXPECT_EQ(b.to_device().migrated, pages);
  const Counters before = ctx.counters();
  for (std::size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b[i], value_of(i)) << i;
  EXPECT_GT(ctx.counters().faults_from_device, before.faults_from_device);
}

TEST(BufferTest, LaunchOverTheSpanDoublesEveryValueAndTheCpuReadsThemBack) {
  Context ctx(cpu_options());
  const std::size_t n = 300000;  // about 1.2 MB: a partial last page
  Buffer<float> buf(ctx, n);
  for (std::size_t i = 0; i < n; ++i) buf[i] = value_of(i);

  ctx.launch(n, [](std::size_t i, device_span<float> x) { x[i] *= 2; }, buf.span());

  // The kernel ran on the device: the pages are there, unlocked again.
  const auto pages = ctx.residency(buf.data(), buf.range_bytes());
  EXPECT_EQ(count(pages, Residency::Device), pages.size());
  for (const PageState& p : pages) EXPECT_FALSE(p.locked);

  const Counters before = ctx.counters();
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) wrong += buf[i] != 2 * value_of(i);
  EXPECT_EQ(wrong, 0u);
  EXPECT_GT(ctx.counters().faults_from_device, before.faults_from_device) << "the values came back through faults";
  EXPECT_EQ(count(ctx.residency(buf.data(), buf.range_bytes()), Residency::System), pages.size());
}

TEST(BufferTest, LaunchOverASubspanTouchesOnlyThatPart) {
  Context ctx(cpu_options());
  const std::size_t n = 4 * 1024 * 4;  // 16 pages of floats
  Buffer<float> buf(ctx, n);
  for (std::size_t i = 0; i < n; ++i) buf[i] = value_of(i);
  const std::size_t first = 1000, len = 9000;  // starts and ends inside pages
  ctx.launch(len, [](std::size_t i, device_span<float> x) { x[i] += 1; }, buf.span().subspan(first, len));
  for (std::size_t i = 0; i < n; ++i) {
    const bool inside = i >= first && i < first + len;
    ASSERT_EQ(buf[i], value_of(i) + (inside ? 1.0f : 0.0f)) << i;
  }
}

TEST(BufferTest, LaunchOverTwoBuffers) {
  Context ctx(cpu_options());
  const std::size_t n = 50000;
  Buffer<float> x(ctx, n);
  Buffer<float> y(ctx, n);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = value_of(i);
    y[i] = 1.0f;
  }
  ctx.launch(
      n, [](std::size_t i, device_span<float> in, device_span<float> out) { out[i] = in[i] * 3 + out[i]; },
      x.span(), y.span());
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(y[i], value_of(i) * 3 + 1.0f) << i;
    ASSERT_EQ(x[i], value_of(i)) << i;
  }
}

TEST(BufferTest, LaunchOnAPoolTooSmallFailsWithOutOfMemoryAndChangesNothing) {
  // A 2 MiB pool cannot hold a 4 MiB buffer: the launch fails before
  // anything moves or runs (a kernel never runs on part of its spans).
  Context ctx(cpu_options(2 * MiB));
  const std::size_t n = 4 * MiB / sizeof(float);
  Buffer<float> buf(ctx, n);
  for (std::size_t i = 0; i < n; ++i) buf[i] = value_of(i);

  std::atomic<bool> ran{false};
  try {
    ctx.launch(
        n,
        [&ran](std::size_t i, device_span<float> x) {
          ran = true;
          x[i] *= 2;
        },
        buf.span());
    ADD_FAILURE() << "the launch succeeded with half the buffer off the device";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::out_of_memory) << e.what();
  }
  EXPECT_FALSE(ran);
  for (const PageState& p : ctx.residency(buf.data(), buf.range_bytes())) {
    EXPECT_FALSE(p.locked);
    EXPECT_EQ(p.residency, Residency::System);
  }
  EXPECT_EQ(ctx.counters().pages_lost, 0u);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(buf[i], value_of(i)) << i;

  // A launch over a half that fits succeeds.
  const std::span<float> half = buf.span().first(n / 2);
  ctx.launch(half.size(), [](std::size_t i, device_span<float> x) { x[i] *= 2; }, half);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(buf[i], (i < n / 2 ? 2 : 1) * value_of(i)) << i;
}

}  // namespace
