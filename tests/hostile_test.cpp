// Hostile arguments, generated: a seeded generator throws a few thousand bad
// calls at every public entry point (Context, Buffer, streams, launch,
// ContextOptions from the environment, the migrate_vma_* driver API and
// migrate_device_range). Each case has exactly one bad component, so the
// expected Errc is known; each must throw that uhmm::Error and change nothing:
// residency, counters and validate() are compared around every case, the
// contents once at the end. A failure prints the seed and the case number.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace {

using namespace uhmm;
using namespace uhmm::test;

constexpr std::uint64_t kSeed = 0x6057'1e5e;
constexpr int kCases = 3000;
constexpr std::size_t kRangeBytes = 2 * MiB + 5 * kPageSize;  // two blocks, the second partial

struct Case {
  std::string what;
  std::vector<Errc> expected;  // any of these
  std::function<void()> call;
};

class HostileTest : public ::testing::Test {
 protected:
  Context ctx{cpu_options(16 * MiB, true, 2)};
  std::mt19937_64 rng{kSeed};
  std::vector<std::byte*> ranges;
  std::byte* freed = nullptr;
  std::vector<std::uint64_t> heap = std::vector<std::uint64_t>(1024);
  Stream stream = ctx.create_stream();

  void SetUp() override {
    for (int r = 0; r < 3; ++r) {
      ranges.push_back(static_cast<std::byte*>(ctx.allocate(kRangeBytes)));
      fill(ranges.back(), kRangeBytes, r);
    }
    // A mix of residencies: range 0 partly on device 1, range 1 partly on device 2, range 2 pinned in part.
    ctx.migrate_to_device(ranges[0], 64 * kPageSize, ctx.device_owner(0));
    ctx.migrate_to_device(ranges[1] + 2 * MiB, 5 * kPageSize, ctx.device_owner(1));
    ctx.pin(ranges[2], 8 * kPageSize);
    freed = static_cast<std::byte*>(ctx.allocate(kRangeBytes));
    ctx.free(freed);
  }

  std::size_t pick(std::size_t n) { return static_cast<std::size_t>(rng() % n); }
  std::byte* some_range() { return ranges[pick(ranges.size())]; }
  // A valid page-aligned span of some range.
  std::pair<std::byte*, std::size_t> valid_span() {
    std::byte* base = some_range();
    const std::size_t pages = kRangeBytes / kPageSize;
    const std::size_t first = pick(pages);
    return {base + first * kPageSize, (1 + pick(pages - first)) * kPageSize};
  }

  // One bad span with its expected codes.
  struct BadSpan {
    std::string kind;
    void* p;
    std::size_t bytes;
    std::vector<Errc> codes;
  };
  BadSpan bad_span() {
    auto [p, bytes] = valid_span();
    switch (pick(9)) {
      case 0: return {"null", nullptr, bytes, {Errc::invalid_argument}};
      case 1: return {"unaligned address", p + 1 + pick(kPageSize - 1), bytes, {Errc::not_aligned}};
      case 2: return {"unaligned length", p, bytes - 1 - pick(kPageSize - 1), {Errc::not_aligned}};
      case 3: return {"zero length", p, 0, {Errc::zero_length}};
      case 4: return {"heap address", heap.data() + 512 - (reinterpret_cast<std::uintptr_t>(heap.data()) % kPageSize) / 8,
                      kPageSize, {Errc::out_of_range, Errc::not_aligned}};
      case 5: return {"freed range", freed + pick(kRangeBytes / kPageSize) * kPageSize, kPageSize, {Errc::out_of_range}};
      case 6: {
        std::byte* base = some_range();
        const std::size_t off = pick(kRangeBytes / kPageSize) * kPageSize;
        return {"past the end", base + off, kRangeBytes - off + (1 + pick(1 << 20)) * kPageSize,
                {Errc::out_of_range, Errc::crosses_ranges}};
      }
      case 7: return {"huge length", p, ~std::size_t{0} & ~(kPageSize - 1), {Errc::out_of_range, Errc::crosses_ranges}};
      default: {
        // A random non-canonical or kernel address, page aligned.
        const std::uintptr_t a = (rng() | (std::uint64_t{1} << 63)) & ~(kPageSize - 1);
        return {"kernel address", reinterpret_cast<void*>(a), kPageSize, {Errc::out_of_range}};
      }
    }
  }
  OwnerId bad_owner() { return static_cast<OwnerId>(3 + pick(250)); }

  Case next_case() {
    BadSpan s = bad_span();
    auto [vp, vbytes] = valid_span();
    const std::string where = s.kind;
    switch (pick(17)) {
      case 0: return {"migrate_to_device " + where, s.codes, [=, this] { ctx.migrate_to_device(s.p, s.bytes); }};
      case 1: return {"migrate_to_device bad owner", {Errc::invalid_argument},
                      [=, this] { ctx.migrate_to_device(vp, vbytes, bad_owner()); }};
      case 2: return {"migrate_to_host " + where, s.codes, [=, this] { ctx.migrate_to_host(s.p, s.bytes); }};
      case 3: return {"migrate_to_device_async " + where, s.codes,
                      [=, this] { ctx.migrate_to_device_async(stream, s.p, s.bytes).get(); }};
      case 4: return {"migrate_to_host_async " + where, s.codes,
                      [=, this] { ctx.migrate_to_host_async(stream, s.p, s.bytes).get(); }};
      case 5: return {"pin " + where, s.codes, [=, this] { ctx.pin(s.p, s.bytes); }};
      case 6: return {"unpin " + where, s.codes, [=, this] { ctx.unpin(s.p, s.bytes); }};
      case 7: return {"residency " + where, s.codes, [=, this] { ctx.residency(s.p, s.bytes); }};
      case 8: {
        // launch rounds spans out to pages itself: only null, zero and foreign memory are bad there.
        if (s.kind == "unaligned address" || s.kind == "unaligned length") s = {"null", nullptr, 8, {Errc::invalid_argument}};
        if (s.kind == "zero length") s.codes = {Errc::invalid_argument};
        std::span<std::byte> bad(static_cast<std::byte*>(s.p), s.bytes);
        if (s.kind == "huge length") return {"launch device", {Errc::invalid_argument},
                                             [=, this] { ctx.launch_on(bad_owner(), 1, [](std::size_t, device_span<std::byte>) {}, std::span<std::byte>(static_cast<std::byte*>(vp), vbytes)); }};
        return {"launch " + s.kind, s.codes,
                [=, this] { ctx.launch(1, [](std::size_t, device_span<std::byte>) {}, bad); }};
      }
      case 9: {
        const std::byte* base = some_range();
        const std::size_t k = pick(3);
        void* p = k == 0 ? static_cast<void*>(const_cast<std::byte*>(base) + (1 + pick(kRangeBytes - 1)))
                  : k == 1 ? static_cast<void*>(freed)
                           : static_cast<void*>(heap.data());
        return {"free of an interior, freed or foreign pointer", {Errc::unknown_range}, [=, this] { ctx.free(p); }};
      }
      case 10: return {"free null", {Errc::invalid_argument}, [this] { ctx.free(nullptr); }};
      case 11: {
        const std::byte* base = some_range();
        const void* p = pick(2) ? static_cast<const void*>(base + kPageSize * (1 + pick(100))) : static_cast<const void*>(freed);
        return {"range_size of a non-base", {Errc::unknown_range}, [=, this] { ctx.range_size(p); }};
      }
      case 12: {
        const std::size_t bytes = pick(2) ? 0 : (std::size_t{1} << 40) + 1 + pick(std::size_t{1} << 60);
        return {"allocate " + std::to_string(bytes), {bytes == 0 ? Errc::zero_length : Errc::invalid_argument},
                [=, this] { ctx.allocate(bytes); }};
      }
      case 13: {
        const std::size_t count = pick(2) ? 0 : ~std::size_t{0} / 8 + 1 + pick(1000);
        return {"Buffer of " + std::to_string(count), {count == 0 ? Errc::zero_length : Errc::invalid_argument},
                [=, this] { Buffer<std::uint64_t> b(ctx, count); }};
      }
      case 14: {
        const std::size_t k = pick(3);
        const OwnerId owner = k == 0 ? kNoOwner : k == 1 ? bad_owner() : ctx.device_owner(0);
        const std::size_t cap = 16 * MiB / kPageSize;
        const DevicePageIndex first = k == 2 ? static_cast<DevicePageIndex>(cap + pick(cap)) : 0;
        const std::size_t n = k == 2 ? 1 + pick(cap) : 1;
        return {"migrate_device_range owner " + std::to_string(owner),
                {k == 2 ? Errc::out_of_range : Errc::invalid_argument},
                [=, this] { migrate_device_range(ctx, owner, first, n); }};
      }
      case 15: return {"device_info / create_stream bad owner", {Errc::invalid_argument},
                       [this] { pick(2) ? (void)ctx.device_info(bad_owner()) : (void)ctx.create_stream(bad_owner()); }};
      default: {
        // migrate_vma_setup: one bad word.
        auto arrays = std::make_shared<std::vector<std::uint64_t>>(2 * kRangeBytes / kPageSize);
        MigrateVma a;
        a.start = vp;
        a.end = static_cast<std::byte*>(vp) + vbytes;
        a.src = arrays->data();
        a.dst = arrays->data() + kRangeBytes / kPageSize;
        a.flags = MIGRATE_VMA_SELECT_SYSTEM;
        std::vector<Errc> codes;
        switch (pick(6)) {
          case 0: (pick(2) ? a.src : a.dst) = nullptr; codes = {Errc::invalid_argument}; break;
          case 1: a.end = a.start; codes = {Errc::zero_length}; break;
          case 2: a.flags |= std::uint64_t{1} << (5 + pick(59)); codes = {Errc::invalid_argument}; break;
          case 3: a.flags = MIGRATE_VMA_FAULT | MIGRATE_VMA_SELECT_COMPOUND; codes = {Errc::invalid_argument}; break;
          case 4: a.flags = MIGRATE_VMA_SELECT_DEVICE_PRIVATE; a.pgmap_owner = pick(2) ? kNoOwner : bad_owner();
                  codes = {Errc::invalid_argument}; break;
          default: a.start = s.p; a.end = static_cast<std::byte*>(s.p) + s.bytes; codes = s.codes;
                   if (s.bytes == 0) codes = {Errc::zero_length};
                   if (s.p == nullptr) codes = {Errc::invalid_argument, Errc::zero_length};
                   if (s.kind == "huge length") codes.push_back(Errc::invalid_argument);  // end wraps below start
                   break;
        }
        return {"migrate_vma_setup", codes, [=, this]() mutable {
                  MigrateVma args = a;
                  (void)arrays;
                  migrate_vma_setup(ctx, args);
                  migrate_vma_finalize(ctx, args);  // reached only if setup wrongly succeeded
                }};
      }
    }
  }

  std::vector<std::vector<PageState>> residency_all() {
    std::vector<std::vector<PageState>> out;
    for (auto* r : ranges) out.push_back(ctx.residency(r, kRangeBytes));
    return out;
  }
};

bool same(const std::vector<std::vector<PageState>>& a, const std::vector<std::vector<PageState>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t r = 0; r < a.size(); ++r)
    for (std::size_t i = 0; i < a[r].size(); ++i) {
      const PageState& x = a[r][i];
      const PageState& y = b[r][i];
      if (x.residency != y.residency || !(x.device == y.device) || x.locked != y.locked || x.pinned != y.pinned)
        return false;
    }
  return true;
}

TEST_F(HostileTest, EveryGeneratedBadCallThrowsItsErrorAndChangesNothing) {
  const auto residency_before = residency_all();
  const Counters counters_before = ctx.counters();
  std::size_t tried = 0;
  for (int n = 0; n < kCases; ++n) {
    Case c = next_case();
    const auto res0 = (n % 16 == 0) ? residency_all() : std::vector<std::vector<PageState>>{};
    try {
      c.call();
      ADD_FAILURE() << "seed " << kSeed << " case " << n << ": " << c.what << " did not throw";
    } catch (const Error& e) {
      bool ok = false;
      for (Errc code : c.expected) ok = ok || e.code() == code;
      EXPECT_TRUE(ok) << "seed " << kSeed << " case " << n << ": " << c.what << " threw '" << to_string(e.code())
                      << "': " << e.what();
      EXPECT_GT(std::string(e.what()).size(), 10u) << "case " << n << ": a message that explains nothing";
    } catch (const std::exception& e) {
      ADD_FAILURE() << "seed " << kSeed << " case " << n << ": " << c.what << " threw a non-uhmm exception: " << e.what();
    }
    ++tried;
    if (n % 16 == 0) {
      ASSERT_TRUE(same(res0, residency_all())) << "seed " << kSeed << " case " << n << ": " << c.what << " changed residency";
      ASSERT_EQ(counter_diff(counters_before, ctx.counters()), "") << "case " << n << ": " << c.what;
      ASSERT_TRUE(ctx.validate()) << "case " << n << ": " << ctx.validate().message;
    }
    if (HasFailure()) break;
  }
  EXPECT_EQ(tried, static_cast<std::size_t>(kCases));
  EXPECT_TRUE(same(residency_before, residency_all()));
  EXPECT_EQ(counter_diff(counters_before, ctx.counters()), "");
  for (int r = 0; r < 3; ++r) expect_pattern(ranges[r], kRangeBytes, r);  // faults the device pages back
  RecordProperty("hostile_cases", static_cast<int>(tried));
}

TEST(HostileOptionsTest, GeneratedBadEnvironmentValuesAreRejectedByName) {
  std::mt19937_64 rng(kSeed);
  const char* vars[] = {"UHMM_DEVICE_POOL", "UHMM_DEVICES", "UHMM_FAULT_AHEAD", "UHMM_FAULT_SPIN_US", "UHMM_PREFETCH_THRESHOLD",
                        "UHMM_CPU_COPY_THREADS", "UHMM_STATS"};
  const std::string junk[] = {"", "-1", "abc", "12x", "1e9", "99999999999999999999999", " 1", "0x", "TB", "1Q",
                              "yes please", "2", "256", "100001", "65", "0", "18446744073709551616K", "\t", "nan"};
  int rejected = 0;
  for (int n = 0; n < 400; ++n) {
    const char* var = vars[rng() % std::size(vars)];
    const std::string& value = junk[rng() % std::size(junk)];
    ASSERT_EQ(::setenv(var, value.c_str(), 1), 0);
    try {
      (void)ContextOptions::from_environment();
      // Some junk is valid for some variables (0 devices is not; "2" is a fine count): accepted is fine then.
    } catch (const Error& e) {
      ++rejected;
      EXPECT_EQ(e.code(), Errc::invalid_argument) << var << "=" << value << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(var), std::string::npos) << "the message does not name " << var;
    } catch (const std::exception& e) {
      ADD_FAILURE() << var << "=" << value << " threw a non-uhmm exception: " << e.what();
    }
    ::unsetenv(var);
  }
  EXPECT_GT(rejected, 200);
}

}  // namespace
