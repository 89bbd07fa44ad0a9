// Invariant 5, "Clear errors": every public call given bad input throws
// uhmm::Error with the right Errc and a message that names the call and the
// problem, and changes nothing (counters, residency of a valid range, and the
// data written before the call are all as they were). Nothing here may abort.
#include <gtest/gtest.h>

#include "test_support.hpp"
#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "uhmm/uhmm.hpp"
#include "uhmm/hooks.hpp"

namespace {

using namespace uhmm;

constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr std::size_t kPool = 16 * MiB;

ContextOptions cpu_options(std::size_t pool = kPool, unsigned devices = 1) {
  ContextOptions o;
  o.backend = "cpu";
  o.device_pool_bytes = pool;
  o.devices = devices;
  return o;
}

// Passes when f throws uhmm::Error with `code` and a message holding every needle.
template <class F>
testing::AssertionResult Throws(Errc code, const std::vector<std::string>& needles, F&& f) {
  try {
    std::forward<F>(f)();
  } catch (const Error& e) {
    const std::string what = e.what();
    if (e.code() != code)
      return testing::AssertionFailure() << "threw Errc '" << to_string(e.code()) << "' (\"" << what
                                         << "\"), expected '" << to_string(code) << "'";
    for (const auto& needle : needles)
      if (what.find(needle) == std::string::npos)
        return testing::AssertionFailure() << "message \"" << what << "\" does not mention \"" << needle << "\"";
    return testing::AssertionSuccess() << what;
  } catch (const std::exception& e) {
    return testing::AssertionFailure() << "threw something other than uhmm::Error: " << e.what();
  } catch (...) {
    return testing::AssertionFailure() << "threw something that is not a std::exception";
  }
  return testing::AssertionFailure() << "did not throw (expected '" << to_string(code) << "')";
}

using uhmm::test::counter_diff;

bool same_state(const PageState& a, const PageState& b) {
  return a.residency == b.residency && a.device == b.device && a.locked == b.locked && a.pinned == b.pinned &&
         a.dirty == b.dirty && a.writable == b.writable;
}

std::uint64_t word_value(std::size_t word) { return word * 0x9e3779b97f4a7c15ull + 0x1234567ull; }

std::byte* at(void* base, std::size_t offset) { return static_cast<std::byte*>(base) + offset; }
void* addr_plus(const void* p, std::size_t n) {
  return reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(p) + n);
}

// A call that takes a span [p, p + bytes) of managed memory.
struct SpanCall {
  std::string name;
  std::function<void(void*, std::size_t)> call;
};

class ErrorsTest : public testing::Test {
 protected:
  // The valid range every test watches: pages [0, 256) and [512, 768) on the
  // host, [256, 512) on the device, [768, 1024) never touched.
  static constexpr std::size_t kRangeBytes = 4 * MiB;
  static constexpr std::size_t kPages = kRangeBytes / kPageSize;
  static constexpr std::size_t kWritten = 768;
  static constexpr std::size_t kWordsPerPage = kPageSize / sizeof(std::uint64_t);

  struct Snapshot {
    Counters counters;
    std::vector<PageState> pages;
  };

  void SetUp() override {
    a_ = ctx_.allocate(kRangeBytes);
    auto* w = static_cast<std::uint64_t*>(a_);
    for (std::size_t i = 0; i < kWritten * kWordsPerPage; ++i) w[i] = word_value(i);
    const MigrationResult r = ctx_.migrate_to_device(at(a_, 256 * kPageSize), 256 * kPageSize);
    ASSERT_EQ(r.migrated, 256u);
    ASSERT_EQ(r.failed, 0u);
    baseline_ = snapshot();
  }

  void TearDown() override {
    if (a_ == nullptr) return;
    // Every page, device ones included (they come back through faults).
    const auto* w = static_cast<const std::uint64_t*>(a_);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < kPages * kWordsPerPage; ++i)
      bad += w[i] != (i < kWritten * kWordsPerPage ? word_value(i) : 0);
    EXPECT_EQ(bad, 0u) << "words of the watched range changed";
  }

  Snapshot snapshot() const { return {ctx_.counters(), ctx_.residency(a_, kRangeBytes)}; }

  // Counters, the residency of the watched range and its host-resident data
  // are as in `before` (reading host pages raises no fault, so this changes nothing).
  void expect_unchanged(const Snapshot& before) const {
    const Snapshot now = snapshot();
    EXPECT_EQ(counter_diff(before.counters, now.counters), "") << "counters changed";
    ASSERT_EQ(now.pages.size(), before.pages.size());
    for (std::size_t p = 0; p < now.pages.size(); ++p) {
      if (!same_state(before.pages[p], now.pages[p])) {
        ADD_FAILURE() << "page " << p << " changed state: " << to_string(before.pages[p].residency) << " -> "
                      << to_string(now.pages[p].residency) << (now.pages[p].locked ? " (locked)" : "")
                      << (now.pages[p].pinned ? " (pinned)" : "");
        break;
      }
    }
    const auto* w = static_cast<const std::uint64_t*>(a_);
    for (std::size_t p = 0; p < now.pages.size(); ++p) {
      if (now.pages[p].residency != Residency::System) continue;
      for (std::size_t k = 0; k < kWordsPerPage; ++k) {
        const std::size_t i = p * kWordsPerPage + k;
        if (w[i] != (p < kWritten ? word_value(i) : 0)) {
          ADD_FAILURE() << "host data of page " << p << " changed at word " << k;
          return;
        }
      }
    }
  }

  void expect_unchanged() const { expect_unchanged(baseline_); }

  // Every call that validates a page span, in one table.
  std::vector<SpanCall> span_calls() {
    return {
        {"migrate_to_device", [this](void* p, std::size_t n) { ctx_.migrate_to_device(p, n); }},
        {"migrate_to_host", [this](void* p, std::size_t n) { ctx_.migrate_to_host(p, n); }},
        {"residency", [this](void* p, std::size_t n) { (void)ctx_.residency(p, n); }},
        {"pin", [this](void* p, std::size_t n) { ctx_.pin(p, n); }},
        {"unpin", [this](void* p, std::size_t n) { ctx_.unpin(p, n); }},
        {"migrate_to_device_async",
         [this](void* p, std::size_t n) {
           auto f = ctx_.migrate_to_device_async(stream_, p, n);
           f.wait();  // bad input must throw at submission; a queued job proves it did not
           throw std::logic_error("migrate_to_device_async queued work for bad input");
         }},
        {"migrate_to_host_async",
         [this](void* p, std::size_t n) {
           auto f = ctx_.migrate_to_host_async(stream_, p, n);
           f.wait();
           throw std::logic_error("migrate_to_host_async queued work for bad input");
         }},
        {"migrate_vma_setup",
         [this](void* p, std::size_t n) {
           std::vector<std::uint64_t> src(64, 0xdeadbeef), dst(64, 0xdeadbeef);
           MigrateVma args;
           args.start = p;
           args.end = addr_plus(p, n);
           args.src = src.data();
           args.dst = dst.data();
           args.flags = MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_FAULT;
           if (n / kPageSize > src.size()) {
             // Too many pages for the arrays: only safe if setup throws before
             // touching them, which is what is being tested. Give it big ones.
             src.assign(std::min<std::size_t>(n / kPageSize, std::size_t{1} << 20), 0xdeadbeef);
             dst.assign(src.size(), 0xdeadbeef);
             args.src = src.data();
             args.dst = dst.data();
           }
           migrate_vma_setup(ctx_, args);
           migrate_vma_finalize(ctx_, args);
           throw std::logic_error("migrate_vma_setup accepted bad input");
         }},
    };
  }

  // Runs every span call on [p, p + n) and expects `code` and the needles
  // (plus the call's name) from each, with nothing changed.
  void expect_all_span_calls(void* p, std::size_t n, Errc code, const std::vector<std::string>& needles,
                             const Snapshot& before) {
    for (const SpanCall& c : span_calls()) {
      SCOPED_TRACE(c.name);
      std::vector<std::string> all = needles;
      all.push_back(c.name + ":");
      EXPECT_TRUE(Throws(code, all, [&] { c.call(p, n); }));
      expect_unchanged(before);
    }
  }
  void expect_all_span_calls(void* p, std::size_t n, Errc code, const std::vector<std::string>& needles) {
    expect_all_span_calls(p, n, code, needles, baseline_);
  }

  void launch_over(void* p, std::size_t bytes) {
    ctx_.launch(
        bytes / sizeof(float), [](std::size_t i, device_span<float> x) { x[i] += 1.0f; },
        std::span<float>(static_cast<float*>(p), bytes / sizeof(float)));
  }

  std::size_t capacity_pages() const { return kPool / kPageSize; }

  Context ctx_{cpu_options()};
  Stream stream_ = ctx_.create_stream();
  void* a_ = nullptr;
  Snapshot baseline_;
};

// ---- null, unaligned, zero length, outside any range ----

TEST_F(ErrorsTest, NullPointerIsInvalidArgumentInEverySpanCall) {
  expect_all_span_calls(nullptr, kPageSize, Errc::invalid_argument, {"null pointer"});
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"launch"}, [&] { launch_over(nullptr, kPageSize); }));
  expect_unchanged();
}

TEST_F(ErrorsTest, NullPointerIsInvalidArgumentInFreeAndRangeSize) {
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"free:", "null pointer"}, [&] { ctx_.free(nullptr); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"range_size:", "null pointer"}, [&] { (void)ctx_.range_size(nullptr); }));
  expect_unchanged();
}

TEST_F(ErrorsTest, UnalignedAddressIsNotAlignedInEverySpanCall) {
  expect_all_span_calls(at(a_, 1), kPageSize, Errc::not_aligned, {"not aligned"});
  expect_all_span_calls(at(a_, kPageSize / 2), kPageSize, Errc::not_aligned, {"not aligned"});
  // The unaligned address of a page on the device.
  expect_all_span_calls(at(a_, 300 * kPageSize + 8), kPageSize, Errc::not_aligned, {"not aligned"});
}

TEST_F(ErrorsTest, UnalignedLengthIsNotAlignedInEverySpanCall) {
  expect_all_span_calls(a_, 100, Errc::not_aligned, {"not aligned"});
  expect_all_span_calls(a_, kPageSize + 1, Errc::not_aligned, {"not aligned"});
  expect_all_span_calls(at(a_, 256 * kPageSize), 2 * kPageSize - 8, Errc::not_aligned, {"not aligned"});
}

TEST_F(ErrorsTest, ZeroLengthIsZeroLengthInEverySpanCall) {
  expect_all_span_calls(a_, 0, Errc::zero_length, {"zero"});
  expect_all_span_calls(at(a_, 256 * kPageSize), 0, Errc::zero_length, {"zero"});
}

TEST_F(ErrorsTest, LaunchOverAnEmptySpanIsRejected) {
  // launch reports an empty span as invalid_argument ("span 0 is empty or null");
  // zero_length would also name the problem. Either way: an Error, nothing moved.
  try {
    launch_over(a_, 0);
    ADD_FAILURE() << "launch over an empty span did not throw";
  } catch (const Error& e) {
    EXPECT_TRUE(e.code() == Errc::invalid_argument || e.code() == Errc::zero_length) << e.what();
    EXPECT_NE(std::string(e.what()).find("launch"), std::string::npos) << e.what();
  }
  expect_unchanged();
}

// 16 bytes aligned to 4: legal in a std::span at any multiple of 4, but one
// that starts 4 bytes into a page has elements that straddle two pages.
struct Quad {
  std::uint32_t v[4];
};
static_assert(sizeof(Quad) == 16 && alignof(Quad) == 4);

TEST_F(ErrorsTest, LaunchOverASpanWhoseElementsStraddlePagesIsInvalidArgumentAndMovesNothing) {
  // Host pages 0 and 1; element 255 would cover bytes 4084..4099.
  const std::span<const Quad> straddling(reinterpret_cast<const Quad*>(at(a_, 4)), 2 * kPageSize / sizeof(Quad) - 1);
  int calls = 0;
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"launch:", "span 0", "4 bytes", "16"}, [&] {
    ctx_.launch(straddling.size(), [&](std::size_t, device_span<const Quad>) { ++calls; }, straddling);
  }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"launch_device:", "span 1", "4 bytes", "16"}, [&] {
    ctx_.launch_device([&](const LaunchStream&, device_span<const std::uint64_t>, device_span<const Quad>) { ++calls; },
                       std::span<const std::uint64_t>(static_cast<const std::uint64_t*>(a_), 8), straddling);
  }));
  EXPECT_EQ(calls, 0);
  expect_unchanged();
}

TEST_F(ErrorsTest, LaunchOverASpanAtAMultipleOfItsElementSizeInsideAPageReadsEveryElementRight) {
  // 16 bytes into page 0, over the page boundary: element 255 is the first of page 1.
  const std::span<const Quad> span(reinterpret_cast<const Quad*>(at(a_, 16)), 2 * kPageSize / sizeof(Quad) - 1);
  std::vector<Quad> seen(span.size());
  ctx_.launch(span.size(), [&](std::size_t i, device_span<const Quad> s) { seen[i] = s[i]; }, span);
  const auto* w = static_cast<const std::uint32_t*>(a_);
  for (std::size_t i = 0; i < span.size(); ++i)
    for (std::size_t k = 0; k < 4; ++k) ASSERT_EQ(seen[i].v[k], w[4 + 4 * i + k]) << "element " << i;
}

TEST_F(ErrorsTest, StackAddressIsOutOfRangeInEverySpanCall) {
  alignas(4096) unsigned char on_stack[2 * kPageSize] = {};
  expect_all_span_calls(on_stack, kPageSize, Errc::out_of_range, {"not in any managed range"});
  EXPECT_TRUE(Throws(Errc::out_of_range, {"launch"}, [&] { launch_over(on_stack, kPageSize); }));
  EXPECT_EQ(on_stack[0], 0);
  expect_unchanged();
}

TEST_F(ErrorsTest, MallocAddressIsOutOfRangeInEverySpanCall) {
  std::unique_ptr<void, decltype(&std::free)> heap(std::aligned_alloc(kPageSize, 4 * kPageSize), &std::free);
  ASSERT_NE(heap, nullptr);
  expect_all_span_calls(heap.get(), 2 * kPageSize, Errc::out_of_range, {"not in any managed range"});
  EXPECT_TRUE(Throws(Errc::out_of_range, {"launch"}, [&] { launch_over(heap.get(), kPageSize); }));
  EXPECT_TRUE(Throws(Errc::unknown_range, {"free:", "not a live managed range"}, [&] { ctx_.free(heap.get()); }));
  EXPECT_TRUE(Throws(Errc::unknown_range, {"range_size:"}, [&] { (void)ctx_.range_size(heap.get()); }));
  expect_unchanged();
}

TEST_F(ErrorsTest, AddressJustBeforeARangeIsOutOfRange) {
  expect_all_span_calls(at(a_, 0) - kPageSize, 2 * kPageSize, Errc::out_of_range, {"not in any managed range"});
}

// ---- spans that leave their range ----

TEST_F(ErrorsTest, SpanRunningPastTheEndOfARangeIsOutOfRange) {
  expect_all_span_calls(at(a_, kRangeBytes - kPageSize), 2 * kPageSize, Errc::out_of_range, {"runs past the end"});
  expect_all_span_calls(a_, kRangeBytes + kPageSize, Errc::out_of_range, {"runs past the end"});
  // Starting on a device page.
  expect_all_span_calls(at(a_, 300 * kPageSize), kRangeBytes, Errc::out_of_range, {"runs past the end"});
  EXPECT_TRUE(Throws(Errc::out_of_range, {"launch", "runs past the end"},
                     [&] { launch_over(at(a_, kRangeBytes - kPageSize), 2 * kPageSize); }));
  expect_unchanged();
}

TEST_F(ErrorsTest, AbsurdLengthIsRejectedWithoutOverflow) {
  const std::size_t huge = std::numeric_limits<std::size_t>::max() & ~(kPageSize - 1);
  for (const SpanCall& c : span_calls()) {
    SCOPED_TRACE(c.name);
    if (c.name == "migrate_vma_setup") continue;  // its arrays could not hold the pages
    try {
      c.call(a_, huge);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_TRUE(e.code() == Errc::out_of_range || e.code() == Errc::crosses_ranges) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.name), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a uhmm::Error: " << e.what();
    }
    expect_unchanged();
  }
}

// The other ranges of a test, sorted by base address, with the watched one.
struct Extent {
  std::byte* base;
  std::size_t bytes;
  std::byte* end() const { return base + bytes; }
};

class CrossingTest : public ErrorsTest {
 protected:
  void SetUp() override {
    ErrorsTest::SetUp();
    // Allocate, free one in the middle and allocate a bigger one into the
    // hole: with top-down mmap this tends to place a range right after another.
    std::vector<void*> made;
    make_adjacent_pair(made);
    for (int i = 0; i < 6; ++i) made.push_back(ctx_.allocate(2 * MiB));
    ctx_.free(made[4]);
    made.erase(made.begin() + 4);
    made.push_back(ctx_.allocate(4 * MiB));
    made.push_back(ctx_.allocate(2 * MiB));
    extents_.push_back({static_cast<std::byte*>(a_), kRangeBytes});
    for (void* p : made) {
      static_cast<std::uint64_t*>(p)[0] = 42;  // give each a host page
      extents_.push_back({static_cast<std::byte*>(p), ctx_.range_size(p)});
    }
    std::sort(extents_.begin(), extents_.end(), [](const Extent& x, const Extent& y) { return x.base < y.base; });
    before_ = snapshot();
  }
  void TearDown() override {
    for (const Extent& e : extents_)
      if (e.base != a_) {
        EXPECT_EQ(reinterpret_cast<const std::uint64_t*>(e.base)[0], 42u);
      }
    ErrorsTest::TearDown();
  }
  // Ranges are mmap'ed with one spare block and trimmed to a 2 MiB boundary,
  // which leaves a hole after each: two ranges rarely touch by themselves.
  // Shape the address space so that they do: reserve a region, open a 6 MiB
  // window for the first range (it takes the top 4 MiB, keeps the lower 2 MiB
  // of that and leaves the upper 2 MiB free), then widen the hole above it
  // to exactly the mapping a (2 MiB - 4 KiB) range needs, so the second range
  // starts where the first ends. Works with top-down mmap; the test that
  // needs it skips when the ranges do not come out adjacent.
  void make_adjacent_pair(std::vector<void*>& made) {
    constexpr std::size_t kReserve = 32 * MiB;
    void* r = ::mmap(nullptr, kReserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return;
    const auto lo = reinterpret_cast<std::uintptr_t>(r);
    const std::uintptr_t hi = lo + kReserve;
    const std::uintptr_t w = (lo + 4 * kBlockSize + kBlockSize - 1) & ~(kBlockSize - 1);
    // Each allocation takes the highest hole it fits; holes left higher up by
    // earlier tests are filled with ranges until the window's turn comes.
    auto allocate_at = [&](std::size_t bytes, std::uintptr_t want) {
      for (int attempt = 0; attempt < 64; ++attempt) {
        void* p = ctx_.allocate(bytes);
        made.push_back(p);
        if (reinterpret_cast<std::uintptr_t>(p) == want) return true;
        if (reinterpret_cast<std::uintptr_t>(p) < w) return false;  // went below the window
      }
      return false;
    };
    ::munmap(reinterpret_cast<void*>(w), 3 * kBlockSize);
    if (allocate_at(kBlockSize, w + kBlockSize)) {
      ::munmap(reinterpret_cast<void*>(w + 3 * kBlockSize), kBlockSize - kPageSize);
      allocate_at(kBlockSize - kPageSize, w + 2 * kBlockSize);
    }
    // Give back what is left of the reservation, which holds no range.
    ::munmap(r, w - lo);
    ::munmap(reinterpret_cast<void*>(w + 4 * kBlockSize - kPageSize), hi - (w + 4 * kBlockSize - kPageSize));
  }
  bool in_any(const std::byte* p) const {
    return std::any_of(extents_.begin(), extents_.end(), [p](const Extent& e) { return p >= e.base && p < e.end(); });
  }
  std::vector<Extent> extents_;
  Snapshot before_;
};

TEST_F(CrossingTest, SpanFromARangeIntoAnAdjacentOneIsCrossesRanges) {
  const Extent* lower = nullptr;
  for (std::size_t i = 0; i + 1 < extents_.size(); ++i)
    if (extents_[i].end() == extents_[i + 1].base) lower = &extents_[i];
  if (lower == nullptr) GTEST_SKIP() << "no two ranges came out adjacent on this machine";
  void* p = lower->end() - kPageSize;
  expect_all_span_calls(p, 2 * kPageSize, Errc::crosses_ranges, {"into another range"}, before_);
  EXPECT_TRUE(Throws(Errc::crosses_ranges, {"launch"}, [&] { launch_over(p, 2 * kPageSize); }));
  expect_unchanged(before_);
}

TEST_F(CrossingTest, SpanFromARangeOverAGapIntoAnotherIsCrossesRanges) {
  const Extent* lower = nullptr;
  const Extent* upper = nullptr;
  for (std::size_t i = 0; i + 1 < extents_.size() && lower == nullptr; ++i)
    if (extents_[i].end() != extents_[i + 1].base) {
      lower = &extents_[i];
      upper = &extents_[i + 1];
    }
  ASSERT_NE(lower, nullptr) << "every range came out adjacent to the next";
  void* p = lower->end() - kPageSize;
  const auto bytes = static_cast<std::size_t>(upper->base + kPageSize - lower->end()) + kPageSize;
  expect_all_span_calls(p, bytes, Errc::crosses_ranges, {"into another range"}, before_);
  expect_unchanged(before_);
}

TEST_F(CrossingTest, SpanFromARangeOverAWholeOtherRangeIsCrossesRanges) {
  // The span starts in one range, covers a whole second range and ends where
  // there is no range at all: it still spans more than one managed range.
  const Extent& top = extents_.back();
  ASSERT_FALSE(in_any(top.end()));
  const Extent* lower = nullptr;
  for (std::size_t i = 0; i + 1 < extents_.size(); ++i)
    if (!in_any(extents_[i].end())) {
      lower = &extents_[i];
      break;
    }
  ASSERT_NE(lower, nullptr);
  ASSERT_NE(lower, &top);
  void* p = lower->end() - kPageSize;
  const auto bytes = static_cast<std::size_t>(top.end() + kPageSize - static_cast<std::byte*>(p));
  expect_all_span_calls(p, bytes, Errc::crosses_ranges, {"another range"}, before_);
  expect_unchanged(before_);
}

// ---- free and range_size ----

TEST_F(ErrorsTest, FreeOfAnInteriorPointerIsUnknownRangeAndKeepsTheRange) {
  EXPECT_TRUE(Throws(Errc::unknown_range, {"free:", "does not start it"}, [&] { ctx_.free(at(a_, kPageSize)); }));
  EXPECT_TRUE(Throws(Errc::unknown_range, {"free:", "does not start it"}, [&] { ctx_.free(at(a_, 1)); }));
  EXPECT_TRUE(Throws(Errc::unknown_range, {"free:", "does not start it"},
                     [&] { ctx_.free(at(a_, 300 * kPageSize)); }));  // a device page
  EXPECT_TRUE(Throws(Errc::unknown_range, {"free:"}, [&] { ctx_.free(at(a_, kRangeBytes - 1)); }));
  EXPECT_EQ(ctx_.range_size(a_), kRangeBytes);
  expect_unchanged();
}

TEST_F(ErrorsTest, RangeSizeOfAnInteriorPointerIsUnknownRange) {
  EXPECT_TRUE(Throws(Errc::unknown_range, {"range_size:", "does not start"},
                     [&] { (void)ctx_.range_size(at(a_, kPageSize)); }));
  EXPECT_TRUE(Throws(Errc::unknown_range, {"range_size:"}, [&] { (void)ctx_.range_size(at(a_, 7)); }));
  EXPECT_EQ(ctx_.range_size(a_), kRangeBytes);
  expect_unchanged();
}

TEST_F(ErrorsTest, DoubleFreeIsUnknownRange) {
  void* b = ctx_.allocate(2 * MiB);
  static_cast<std::uint64_t*>(b)[0] = 7;
  ctx_.migrate_to_device(b, 2 * MiB);
  ctx_.free(b);
  const Snapshot after_free = snapshot();
  EXPECT_TRUE(Throws(Errc::unknown_range, {"free:", "not a live managed range"}, [&] { ctx_.free(b); }));
  EXPECT_TRUE(Throws(Errc::unknown_range, {"free:"}, [&] { ctx_.free(b); }));
  expect_unchanged(after_free);
}

TEST_F(ErrorsTest, FreedRangeIsRejectedByEveryCall) {
  void* b = ctx_.allocate(2 * MiB);
  auto* w = static_cast<std::uint64_t*>(b);
  for (std::size_t i = 0; i < 2 * MiB / 8; ++i) w[i] = i;
  ctx_.migrate_to_device(b, MiB);  // half on the device when freed
  ctx_.free(b);
  const Snapshot after_free = snapshot();
  EXPECT_EQ(after_free.counters.device_pages_in_use, baseline_.counters.device_pages_in_use)
      << "free must release the range's device pages";

  expect_all_span_calls(b, kPageSize, Errc::out_of_range, {"not in any managed range"}, after_free);
  expect_all_span_calls(b, 2 * MiB, Errc::out_of_range, {"not in any managed range"}, after_free);
  expect_all_span_calls(at(b, MiB), kPageSize, Errc::out_of_range, {"not in any managed range"}, after_free);
  EXPECT_TRUE(Throws(Errc::out_of_range, {"launch"}, [&] { launch_over(b, kPageSize); }));
  EXPECT_TRUE(Throws(Errc::unknown_range, {"free:"}, [&] { ctx_.free(b); }));
  EXPECT_TRUE(Throws(Errc::unknown_range, {"range_size:"}, [&] { (void)ctx_.range_size(b); }));
  expect_unchanged(after_free);
}

// ---- allocate ----

TEST_F(ErrorsTest, AllocateZeroBytesIsZeroLength) {
  EXPECT_TRUE(Throws(Errc::zero_length, {"allocate:"}, [&] { (void)ctx_.allocate(0); }));
  expect_unchanged();
}

TEST_F(ErrorsTest, AllocateOfAnAbsurdSizeIsInvalidArgument) {
  for (const std::size_t bytes : {std::numeric_limits<std::size_t>::max(), std::numeric_limits<std::size_t>::max() - 4095,
                                  std::size_t{1} << 50, (std::size_t{1} << 44) + 1}) {
    SCOPED_TRACE(bytes);
    EXPECT_TRUE(Throws(Errc::invalid_argument, {"allocate:"}, [&] { (void)ctx_.allocate(bytes); }));
  }
  expect_unchanged();
}

// ---- devices ----

TEST_F(ErrorsTest, BadDeviceIndexOrOwnerIsInvalidArgument) {
  ASSERT_EQ(ctx_.device_count(), 1u);
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"device_owner:"}, [&] { (void)ctx_.device_owner(1); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"device_owner:", "99"}, [&] { (void)ctx_.device_owner(99); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"device_info:", "99"}, [&] { (void)ctx_.device_info(99); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"device_info:", "2"}, [&] { (void)ctx_.device_info(2); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"backend:", "99"}, [&] { (void)uhmm::hooks::backend(ctx_, 99); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"create_stream:", "99"}, [&] { (void)ctx_.create_stream(99); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_to_device:", "99"},
                     [&] { ctx_.migrate_to_device(a_, kPageSize, 99); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"launch", "99"}, [&] {
    ctx_.launch_on(
        99, 8, [](std::size_t i, device_span<std::uint64_t> x) { x[i] = 0; },
        std::span<std::uint64_t>(static_cast<std::uint64_t*>(a_), 8));
  }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_device_range:", "99"},
                     [&] { (void)migrate_device_range(ctx_, 99, 0, 1); }));
  expect_unchanged();
}

TEST_F(ErrorsTest, OwnerZeroMeansTheFirstDeviceWhereDocumented) {
  const OwnerId first = ctx_.device_owner(0);
  EXPECT_NE(first, kNoOwner);
  EXPECT_EQ(ctx_.device_info(kNoOwner).name, ctx_.device_info(first).name);
  EXPECT_EQ(ctx_.device_info(kNoOwner).backend, "cpu");
  EXPECT_EQ(ctx_.create_stream(kNoOwner).device(), first);
  EXPECT_EQ(&uhmm::hooks::backend(ctx_, kNoOwner), &uhmm::hooks::backend(ctx_, first));
  expect_unchanged();
}

TEST_F(ErrorsTest, InjectFaultsOnABadOwnerIsInvalidArgumentAndInjectsNothing) {
  FaultInjection no_pages;
  no_pages.alloc_pages_left = 0;
  no_pages.copy_fail_at_page = 0;
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"inject_faults:", "99"}, [&] { uhmm::hooks::inject_faults(ctx_, 99, no_pages); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"inject_faults:"}, [&] { uhmm::hooks::inject_faults(ctx_, 2, no_pages); }));
  expect_unchanged();
  // Nothing was armed on the real device: a migration still succeeds.
  const MigrationResult r = ctx_.migrate_to_device(a_, 16 * kPageSize);
  EXPECT_EQ(r.migrated, 16u);
  EXPECT_EQ(r.failed, 0u);
  EXPECT_TRUE(static_cast<bool>(r.status)) << r.status.message;
}

TEST_F(ErrorsTest, MigrateDeviceRangeOfOwnerZeroDoesNotCrash) {
  // Owner 0 is never a device (types.hpp). migrate_device_range must either
  // reject it or treat it as the first device; it must not index a missing pool.
  try {
    const std::size_t moved = migrate_device_range(ctx_, kNoOwner, 0, capacity_pages());
    // Taken as the first device: the 256 pages on it came back.
    EXPECT_EQ(moved, 256u);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
    EXPECT_NE(std::string(e.what()).find("migrate_device_range"), std::string::npos) << e.what();
    expect_unchanged();
  }
}

TEST_F(ErrorsTest, MigrateDeviceRangeOfZeroPagesIsZeroLength) {
  const OwnerId owner = ctx_.device_owner(0);
  EXPECT_TRUE(Throws(Errc::zero_length, {"migrate_device_range:"}, [&] { (void)migrate_device_range(ctx_, owner, 0, 0); }));
  expect_unchanged();
}

TEST_F(ErrorsTest, MigrateDeviceRangePastThePoolIsOutOfRange) {
  const OwnerId owner = ctx_.device_owner(0);
  const std::size_t cap = capacity_pages();
  const auto cap_index = static_cast<DevicePageIndex>(cap);
  EXPECT_TRUE(Throws(Errc::out_of_range, {"migrate_device_range:"},
                     [&] { (void)migrate_device_range(ctx_, owner, cap_index, 1); }));
  EXPECT_TRUE(Throws(Errc::out_of_range, {"migrate_device_range:"},
                     [&] { (void)migrate_device_range(ctx_, owner, 0, cap + 1); }));
  EXPECT_TRUE(Throws(Errc::out_of_range, {"migrate_device_range:"},
                     [&] { (void)migrate_device_range(ctx_, owner, cap_index - 1, 2); }));
  EXPECT_TRUE(Throws(Errc::out_of_range, {"migrate_device_range:"}, [&] {
    (void)migrate_device_range(ctx_, owner, std::numeric_limits<DevicePageIndex>::max(), 1);
  }));
  EXPECT_TRUE(Throws(Errc::out_of_range, {"migrate_device_range:"},
                     [&] { (void)migrate_device_range(ctx_, owner, 1, std::numeric_limits<std::size_t>::max()); }));
  expect_unchanged();
}

// ---- migrate_vma_* ----

class MigrateVmaErrorsTest : public ErrorsTest {
 protected:
  static constexpr std::size_t kN = 16;  // pages [0, 16): host pages of the watched range
  void SetUp() override {
    ErrorsTest::SetUp();
    src_.assign(kN, kSentinel);
    dst_.assign(kN, kSentinel);
    args_.start = a_;
    args_.end = at(a_, kN * kPageSize);
    args_.src = src_.data();
    args_.dst = dst_.data();
    args_.flags = MIGRATE_VMA_SELECT_SYSTEM;
  }
  // Setup refused: the arrays and the out fields are untouched too.
  void expect_args_untouched() const {
    EXPECT_EQ(std::count(src_.begin(), src_.end(), kSentinel), static_cast<std::ptrdiff_t>(kN));
    EXPECT_EQ(std::count(dst_.begin(), dst_.end(), kSentinel), static_cast<std::ptrdiff_t>(kN));
    EXPECT_EQ(args_.cpages, 0u);
    EXPECT_EQ(args_.session, nullptr);
  }
  static constexpr std::uint64_t kSentinel = 0x5a5a5a5a5a5a5a5aull;
  std::vector<std::uint64_t> src_, dst_;
  MigrateVma args_;
};

TEST_F(MigrateVmaErrorsTest, NullSrcOrDstIsInvalidArgument) {
  args_.src = nullptr;
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_vma_setup:", "src and dst"}, [&] { migrate_vma_setup(ctx_, args_); }));
  args_.src = src_.data();
  args_.dst = nullptr;
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_vma_setup:", "src and dst"}, [&] { migrate_vma_setup(ctx_, args_); }));
  expect_args_untouched();
  expect_unchanged();
}

TEST_F(MigrateVmaErrorsTest, EndNotAfterStartIsRejected) {
  args_.end = args_.start;
  EXPECT_TRUE(Throws(Errc::zero_length, {"migrate_vma_setup:", "not after start"}, [&] { migrate_vma_setup(ctx_, args_); }));
  args_.start = at(a_, 8 * kPageSize);
  args_.end = at(a_, 4 * kPageSize);
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_vma_setup:", "not after start"}, [&] { migrate_vma_setup(ctx_, args_); }));
  expect_args_untouched();
  expect_unchanged();
}

TEST_F(MigrateVmaErrorsTest, UnalignedEndIsNotAligned) {
  args_.end = at(a_, kN * kPageSize - 100);
  EXPECT_TRUE(Throws(Errc::not_aligned, {"migrate_vma_setup:"}, [&] { migrate_vma_setup(ctx_, args_); }));
  expect_args_untouched();
  expect_unchanged();
}

TEST_F(MigrateVmaErrorsTest, UnknownFlagsAreInvalidArgument) {
  for (const std::uint64_t extra : {std::uint64_t{1} << 2, std::uint64_t{1} << 5, std::uint64_t{1} << 40}) {
    SCOPED_TRACE(extra);
    args_.flags = MIGRATE_VMA_SELECT_SYSTEM | extra;
    EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_vma_setup:", "unknown flags"}, [&] { migrate_vma_setup(ctx_, args_); }));
  }
  expect_args_untouched();
  expect_unchanged();
}

TEST_F(MigrateVmaErrorsTest, NoSelectFlagIsInvalidArgument) {
  for (const std::uint64_t flags : {std::uint64_t{0}, MIGRATE_VMA_FAULT, MIGRATE_VMA_SELECT_COMPOUND | MIGRATE_VMA_FAULT}) {
    SCOPED_TRACE(flags);
    args_.flags = flags;
    EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_vma_setup:", "select"}, [&] { migrate_vma_setup(ctx_, args_); }));
  }
  expect_args_untouched();
  expect_unchanged();
}

TEST_F(MigrateVmaErrorsTest, SelectDevicePrivateWithABadOwnerIsInvalidArgument) {
  args_.flags = MIGRATE_VMA_SELECT_DEVICE_PRIVATE;
  args_.start = at(a_, 256 * kPageSize);  // device pages
  args_.end = at(a_, (256 + kN) * kPageSize);
  for (const OwnerId owner : {OwnerId{kNoOwner}, OwnerId{2}, OwnerId{99}}) {
    SCOPED_TRACE(static_cast<int>(owner));
    args_.pgmap_owner = owner;
    EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_vma_setup:", "pgmap_owner"}, [&] { migrate_vma_setup(ctx_, args_); }));
  }
  expect_args_untouched();
  expect_unchanged();
}

TEST_F(MigrateVmaErrorsTest, SetupTwiceWithoutFinalizeIsBusy) {
  migrate_vma_setup(ctx_, args_);
  EXPECT_EQ(args_.cpages, kN);
  const std::vector<std::uint64_t> src_after_setup = src_;
  const auto session = args_.session;
  EXPECT_TRUE(Throws(Errc::busy, {"migrate_vma_setup:", "finalize"}, [&] { migrate_vma_setup(ctx_, args_); }));
  EXPECT_EQ(src_, src_after_setup) << "the refused setup rewrote src[]";
  EXPECT_EQ(args_.session, session) << "the refused setup replaced the migration in flight";
  // The first migration is still intact and ends cleanly, moving nothing.
  EXPECT_EQ(migrate_vma_pages(ctx_, args_), 0u);  // the driver filled no dst[]
  migrate_vma_finalize(ctx_, args_);
  EXPECT_EQ(args_.session, nullptr);
  expect_unchanged();
}

TEST_F(MigrateVmaErrorsTest, PagesOrFinalizeWithoutSetupIsInvalidArgument) {
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_vma_pages:", "setup"}, [&] { (void)migrate_vma_pages(ctx_, args_); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_vma_finalize:", "setup"}, [&] { migrate_vma_finalize(ctx_, args_); }));
  expect_args_untouched();
  expect_unchanged();
}

TEST_F(MigrateVmaErrorsTest, FinalizeTwiceIsInvalidArgument) {
  migrate_vma_setup(ctx_, args_);
  migrate_vma_finalize(ctx_, args_);
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_vma_finalize:"}, [&] { migrate_vma_finalize(ctx_, args_); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_vma_pages:"}, [&] { (void)migrate_vma_pages(ctx_, args_); }));
  expect_unchanged();
}

TEST_F(MigrateVmaErrorsTest, PagesTwiceIsInvalidArgument) {
  migrate_vma_setup(ctx_, args_);
  EXPECT_EQ(migrate_vma_pages(ctx_, args_), 0u);
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_vma_pages:", "already"}, [&] { (void)migrate_vma_pages(ctx_, args_); }));
  migrate_vma_finalize(ctx_, args_);
  expect_unchanged();
}

// ---- streams ----

TEST_F(ErrorsTest, MovedFromStreamIsInvalidArgument) {
  Stream moved_to = std::move(stream_);
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_to_device_async:", "moved from"},
                     [&] { (void)ctx_.migrate_to_device_async(stream_, a_, kPageSize); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_to_host_async:", "moved from"},
                     [&] { (void)ctx_.migrate_to_host_async(stream_, a_, kPageSize); }));
  stream_.synchronize();  // a no-op on a moved-from stream
  EXPECT_EQ(stream_.device(), kNoOwner);
  moved_to.synchronize();
  expect_unchanged();
  // The stream it moved to works.
  EXPECT_EQ(ctx_.migrate_to_device_async(moved_to, a_, kPageSize).get().migrated, 1u);
}

TEST_F(ErrorsTest, StreamOfAnotherContextIsInvalidArgument) {
  Context other(cpu_options(4 * MiB));
  Stream foreign = other.create_stream();
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_to_device_async:", "another context"},
                     [&] { (void)ctx_.migrate_to_device_async(foreign, a_, kPageSize); }));
  EXPECT_TRUE(Throws(Errc::invalid_argument, {"migrate_to_host_async:", "another context"},
                     [&] { (void)ctx_.migrate_to_host_async(foreign, at(a_, 256 * kPageSize), kPageSize); }));
  foreign.synchronize();
  expect_unchanged();
  const Counters o = other.counters();
  EXPECT_EQ(o.pages_to_device, 0u);
  EXPECT_EQ(o.pages_to_host, 0u);
}

TEST_F(ErrorsTest, ValidCallsAfterErrorsStillWork) {
  // A burst of refused calls leaves the context fully usable.
  for (int i = 0; i < 50; ++i) {
    EXPECT_THROW(ctx_.migrate_to_device(at(a_, 1), kPageSize), Error);
    EXPECT_THROW(ctx_.free(at(a_, kPageSize)), Error);
    EXPECT_THROW((void)ctx_.migrate_to_device_async(stream_, nullptr, kPageSize), Error);
  }
  expect_unchanged();
  const MigrationResult r = ctx_.migrate_to_host(a_, kRangeBytes);
  EXPECT_EQ(r.migrated, 256u);
  EXPECT_EQ(r.failed, 0u);
}

}  // namespace
